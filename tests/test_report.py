"""The evaluation report: every section present and non-empty, self-contained, no identifiers,
re-rendered identically from its saved data; rendered in headless Chromium (Debian's
``chromium``): every image loads, no section is empty, a screenshot and a PDF come out.

The report is built from real evaluation outputs (``medcl.fewshot.suite.evaluate_features`` on
synthetic features of a tiny cohort), not from hand-written numbers."""

import base64
import io
import os
import re

import numpy as np
import pytest
import torch

from medcl.cli import main
from medcl.config import load_config
from medcl.fewshot.suite import evaluate_features
from medcl.report import DEMO_BANNER, MontageSample, load_report_data, render_report, save_report_data
from medcl.report.browser import browser_check, find_browser, html_to_pdf, screenshot
from medcl.report.content import build_report_data, model_card
from medcl.report.trust import saliency_block

SECTIONS = ["summary", "cohort", "method", "curves", "metrics", "confusion", "roc", "reliability", "calibration",
            "saliency", "embeddings",
            "montage", "sensitivity", "budget", "label-curve", "training", "model-card", "notes", "config"]
SUBJECTS = np.array([f"subj-{i:04d}x" for i in range(24)])
TINY = ["fewshot.shots=[1,3]", "fewshot.n_episodes=100", "fewshot.logreg_episodes=10", "fewshot.scratch_episodes=3",
        "fewshot.scratch_steps=5", "fewshot.n_boot=200", "fewshot.budget_random=30", "fewshot.n_query=2"]
needs_browser = pytest.mark.skipif(find_browser() is None and os.environ.get("MEDCL_REQUIRE_BROWSER") != "1",
                                   reason="no Chromium (apt-get install chromium); .ci/run installs it and sets "
                                          "MEDCL_REQUIRE_BROWSER=1, so CI fails instead of skipping")


@pytest.fixture(scope="module")
def report_data():
    cfg = load_config(None, TINY)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 8)
    labels = np.array(["atrophy", "healthy", "lesion"])[y]
    feats = {"pretrained": rng.normal(size=(24, 32)) + 2 * np.eye(3, 32)[y], "random_init": rng.normal(size=(24, 32)),
             "raw_voxels": rng.normal(size=(24, 10)), "radiomics": rng.normal(size=(24, 20))}
    views = torch.as_tensor(rng.normal(size=(24, 1, 16, 16, 16)).astype(np.float32))
    fs = evaluate_features(cfg, feats, labels, SUBJECTS, views, 16)
    montage = [MontageSample(c, rng.random((16, 16, 16)), rng.random((16, 16, 16)), rng.random((16, 16, 16)))
               for c in ("atrophy", "healthy", "lesion")]
    blob = np.zeros((20, 24, 18))
    blob[5:9, 10:14, 6:10] = 1.0
    examples = [{"label": c, "predicted": p, "correct": c == p, "image": rng.random((20, 24, 18)), "saliency": blob,
                 "regions": {"blob": 3.0 if c == "lesion" else 0.5, "rest": 0.9}}
                for c, p in (("lesion", "lesion"), ("lesion", "healthy"), ("atrophy", "atrophy"))]
    return build_report_data(cfg, fs, "medcl report test", {"all": fs.counts()}, banner=DEMO_BANNER,
                             saliency=saliency_block(examples, "gradcam", LESIONS),
                             losses=list(np.linspace(3, 1, 50)), montage=montage, notes=["a note"],
                             model_card=model_card(cfg, fs, "models:/medcl-encoder@champion", demo=True, deploy_shots=3))


LESIONS = {"method": "gradcam", "class": "lesion", "n_scans": 2, "median_ratio": 2.5, "mean_ratio": 2.5,
           "mean_ratio_ci95": [1.25, 3.75], "fraction_above_95": 0.5,
           "per_scan": [{"ratio": 1.25, "fraction_above": 0.9}, {"ratio": 3.75, "fraction_above": 1.0}]}


@pytest.fixture(scope="module")
def report(report_data, tmp_path_factory):
    return render_report(report_data, tmp_path_factory.mktemp("report") / "report.html")


def _sections(html: str) -> dict:
    return dict(re.findall(r"<section id='([^']+)'>(.*?)</section>", html, re.S))


def test_every_section_is_there_with_content(report):
    html = report.read_text()
    sections = _sections(html)
    assert list(sections) == SECTIONS
    for sid, body in sections.items():
        text = re.sub(r"<[^>]+>", "", re.sub(r"<h2>.*?</h2>", "", body)).strip()
        assert text or "<img" in body, sid
    assert "simulated pathology on real anatomy" in html.lower()
    # one curve figure per metric, every head in each; all baselines and the ceiling in the tables
    assert sections["curves"].count("<img") == 5
    assert sections["saliency"].count("<img") == 3 and "Where the model looks" in sections["saliency"]
    assert re.search(r"<td>lesion</td><td>3\.000</td><td>0\.900</td>", sections["saliency"])   # region table
    assert re.search(r"Ratio: median 2\.50, mean 2\.50 \[95% CI 1\.25, 3\.75\]</b> \(above the shuffled", sections["saliency"])
    assert "Per scan: 1.25, 3.75." in sections["saliency"]               # the simulated lesions' check
    assert "ECE before" in sections["calibration"] and "K held out" in sections["label-curve"]
    for name in ("pretrained encoder", "random-init encoder", "raw voxels (PCA)", "radiomics (IBSI, MIRP)",
                 "3D ResNet from scratch", "linear probe on all labels"):
        assert name in sections["summary"], name
    assert "radiomics (IBSI, MIRP)" in sections["metrics"] and "Radiomics (IBSI-compliant, MIRP)" in sections["method"]
    for head in ("prototype (cosine, CL2N)", "prototype (Euclidean)", "logistic regression (C by LOSO)", "kNN"):
        assert head in sections["metrics"], head
    assert "subject bootstrap" in sections["summary"] and "episodic" in sections["metrics"]
    for part in ("Intended use", "Data", "Limitations", "simulated pathology on real anatomy"):
        assert part in sections["model-card"], part


def test_images_are_embedded_pngs_and_nothing_is_fetched(report):
    html = report.read_text()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 15       # 5 curves + confusion, ROC, reliability, 3 saliency overlays, t-SNE map, montage,
    #                               label curve, loss
    import matplotlib.image as mpimg

    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 50 and img.shape[1] > 50 and img.std() > 0
    assert "http://" not in html and "https://" not in html


def test_no_identifier_reaches_the_report_or_its_data(report, report_data, tmp_path):
    save_report_data(report_data, tmp_path)
    for text in (report.read_text(), (tmp_path / "report_data.json").read_text()):
        assert not any(s in text for s in SUBJECTS), "a subject key leaked"
        assert "subj-" not in text


def test_saved_data_renders_the_same_report(report, report_data, tmp_path):
    save_report_data(report_data, tmp_path / "data")
    again = render_report(load_report_data(tmp_path / "data"), tmp_path / "again.html")
    assert _sections(again.read_text()).keys() == _sections(report.read_text()).keys()
    strip = lambda h: re.sub(r"data:image/png;base64,[^']*", "", h)          # noqa: E731 (PNG bytes may differ)
    assert strip(again.read_text()) == strip(report.read_text())


def test_a_section_without_data_is_left_out_not_left_empty(report_data, tmp_path):
    import dataclasses

    bare = dataclasses.replace(report_data, budget={}, label_curve={}, calibration={}, conformal={}, saliency={},
                               embeddings={}, losses=[], montage=[], notes=[], rocs={},
                               reliability={}, scratch={}, ceiling={}, paired=[], model_card={}, method=[])
    save_report_data(bare, tmp_path / "bare" / "report_data")         # as `medcl fewshot` leaves it
    assert main(["report", str(tmp_path / "bare"), "--no-pdf"]) == 0     # `medcl report DIR`
    sections = _sections((tmp_path / "bare" / "report.html").read_text())
    assert list(sections) == ["summary", "cohort", "curves", "metrics", "confusion", "sensitivity", "config"]
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--no-pdf"]) == 2   # one-line error, no traceback


@needs_browser
def test_chromium_renders_every_image_and_no_empty_section(report, tmp_path):
    check = browser_check(report)
    assert [s["id"] for s in check["sections"]] == SECTIONS
    assert len(check["images"]) == 15 and check["broken"] == [], check["broken"]
    assert all(i["w"] > 50 and i["h"] > 50 for i in check["images"])
    assert check["empty_sections"] == [] and check["external"] == []
    assert all(s["height"] > 30 for s in check["sections"])
    import matplotlib.image as mpimg

    shot = mpimg.imread(screenshot(report, tmp_path / "shot.png"))
    assert shot.shape[:2] == (2400, 1200) and shot[..., :3].std() > 0.05      # not a blank page
    pdf = html_to_pdf(report, tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 5


@needs_browser
def test_the_check_fails_on_a_broken_image_and_an_empty_section(report, tmp_path):
    html = report.read_text()
    broken = html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken = broken.replace("<section id='notes'>", "<section id='hollow'><h2>Hollow</h2></section><section id='notes'>")
    (tmp_path / "broken.html").write_text(broken)
    check = browser_check(tmp_path / "broken.html")
    assert len(check["broken"]) == 1 and check["empty_sections"] == ["hollow"]


def test_montage_shows_the_local_views_of_multicrop(report_data, tmp_path):
    """Local views get columns of their own (the figure is wider by them) and survive the
    report's saved data."""
    import dataclasses

    from PIL import Image

    from medcl.report.figures import montage_figure

    rng = np.random.default_rng(1)
    local = [rng.random((8, 8, 8)) for _ in range(2)]
    with_local = [dataclasses.replace(s, local=local) for s in report_data.montage]

    def width(samples) -> int:
        uri = montage_figure(samples)
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size[0]

    assert width(with_local) / width(report_data.montage) == pytest.approx(5 / 3, rel=0.05)
    save_report_data(dataclasses.replace(report_data, montage=with_local), tmp_path)
    again = load_report_data(tmp_path).montage
    assert [len(s.local) for s in again] == [2, 2, 2]
    assert np.allclose(again[0].local[1], local[1][:, :, 4])          # the mid-axial slice
    assert all(s.local == [] for s in load_report_data(_saved(report_data, tmp_path / "plain")).montage)


def _saved(data, folder):
    save_report_data(data, folder)
    return folder
