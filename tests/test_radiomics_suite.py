"""The radiomics baseline in the few-shot suite: computed on a tiny real cohort (simulated
pathology on the MNI template at 6 mm), scored by every head at every K on the same episodes as
the other sources, cached per cohort (reused, invalidated by other settings), in summary.json
and the report; its grid resampling and config checks."""

import os

import numpy as np
import pytest

from medcl import cli
from medcl.config import ConfigError, DataConfig, load_config
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest
from medcl.fewshot.radiomics import FAMILIES, cache_path, cohort_radiomics, resample
from medcl.fewshot.suite import evaluate_encoders, pca_cohort
from medcl.models import build_encoder
from medcl.report.content import build_report_data, summary_block
from medcl.report.html import render_report
from medcl.validate import load_checked

TINY = ["fewshot.shots=[1,2]", "fewshot.n_episodes=20", "fewshot.n_query=1", "fewshot.logreg_episodes=5",
        "fewshot.n_boot=50", "fewshot.budget_method=none", "fewshot.embedding_map=none", "fewshot.probe=false",
        "fewshot.baselines=[raw_voxels,radiomics]", "fewshot.radiomics_workers=0", "fewshot.pca_components=4",
        "augment.view_size=16"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    root = tmp_path_factory.mktemp("radiomics_cohort")
    src = make_demo_sources(root / "src", 18, seed=0, spacing=6.0, workers=1)
    ingest([src.nifti_dir], root / "cohort", DataConfig(spacing=6.0), labels_csv=src.labels_csv,
           test_fraction=0.5, split_seed=0, progress=False)
    return Cohort.load(root / "cohort")


@pytest.fixture(scope="module")
def evaluated(cohort):
    cfg = load_config(None, TINY)
    encoders = {"pretrained": build_encoder("resnet10", 2, 0.25, seed=0).eval()}
    return cfg, evaluate_encoders(cfg, cohort, encoders, log=lambda *_: None)


def test_radiomics_is_scored_by_every_head_at_every_k_on_the_same_episodes(evaluated):
    cfg, fs = evaluated
    assert set(fs.results) == {"pretrained", "raw_voxels", "radiomics"}
    for head in cfg.fewshot.heads:
        assert set(fs.results["radiomics"][head]) == {"1", "2"}
        for k in ("1", "2"):
            r, p = fs.results["radiomics"][head][k], fs.results["pretrained"][head][k]
            assert 0 <= r["ci95"][0] <= r["balanced_accuracy"] <= r["ci95"][1] <= 1
            assert r["n_episodes"] == p["n_episodes"]
            a, b = fs.predictions["radiomics"][head][k], fs.predictions["pretrained"][head][k]
            assert np.array_equal(a.y, b.y) and np.array_equal(a.subject, b.subject)   # same episodes
    assert {(p["b"], p["shots"]) for p in fs.paired} == {(b, k) for b in ("raw_voxels", "radiomics") for k in "12"}
    X = fs.features["radiomics"]
    assert X.shape[0] == len(fs.labels) and np.isfinite(X).all()
    assert fs.radiomics["fit_on"] == "train split" and fs.radiomics["spacing"] == 6.0   # coarser cohort: own grid
    assert "radiomics" in fs.timings


def test_summary_and_report_show_radiomics(evaluated, tmp_path):
    cfg, fs = evaluated
    block = summary_block(cfg, fs)
    assert set(block["radiomics"]) == {"1", "2"} and "ci95" in block["radiomics"]["1"]
    data = build_report_data(cfg, fs, "radiomics test", {"all": fs.counts()})
    html = render_report(data, tmp_path / "report.html").read_text()
    assert html.count("radiomics (IBSI, MIRP)") >= 3        # summary table, all-metrics table, paired differences
    assert "z-scored with the mean and standard deviation of the unlabelled pretraining" in html


def test_cache_is_reused_and_keyed_by_the_settings(cohort, evaluated):
    cfg, fs = evaluated
    f = cfg.fewshot
    path = cache_path(cohort, f.radiomics_spacing, f.radiomics_families, f.radiomics_bins)
    assert path.exists() and path.parent == cohort.root / "radiomics"
    X, names, info = cohort_radiomics(cohort, f.radiomics_spacing, f.radiomics_families, f.radiomics_bins)
    assert info["computed"] == 0 and info["cached"] == len(cohort)
    stamp = os.stat(path).st_mtime_ns
    again = evaluate_encoders(cfg, cohort, {}, log=lambda *_: None)
    assert again.radiomics["computed"] == 0 and os.stat(path).st_mtime_ns == stamp
    assert np.array_equal(again.features["radiomics"], fs.features["radiomics"])
    other = Cohort(cohort.root, cohort.rows[:2])
    X16, names16, info16 = cohort_radiomics(other, f.radiomics_spacing, f.radiomics_families, 16)
    assert info16["computed"] == 2 and cache_path(other, f.radiomics_spacing, f.radiomics_families, 16) != path
    assert len(names16) == len(names) and not np.allclose(X16, X[:2])
    fewer = cohort_radiomics(other, f.radiomics_spacing, ("statistics",), f.radiomics_bins)
    assert fewer[2]["computed"] == 2 and len(fewer[1]) < len(names)


def test_pca_and_radiomics_are_fitted_on_the_same_unlabelled_scans(cohort, evaluated):
    _, fs = evaluated
    assert fs.radiomics["fit_scans"] == len(pca_cohort(cohort)) == len(cohort.select(split="train"))


def test_resample_averages_blocks_and_keeps_half_covered_mask_voxels():
    img = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    mask = np.zeros(img.shape, bool)
    mask[:1, :2, :1] = True                                  # a quarter of the first 2x2x2 block: out
    mask[2:4, 2:4, 2:4] = True                               # a whole block: in
    mask[4, :2, :2] = True                                   # half the last block (the other half is padding): in
    out, m, sp = resample(img, mask, 2.0, 4.0)
    assert out.shape == (3, 2, 2) and sp == (4.0, 4.0, 4.0)   # odd axis padded with its edge values
    assert out[0, 0, 0] == pytest.approx(img[:2, :2, :2].mean())
    assert out[2, 0, 0] == pytest.approx(img[4, :2, :2].mean())
    assert m.sum() == 2 and m[1, 1, 1] and m[2, 0, 0]
    same = resample(img, mask, 6.0, 4.0)                     # a coarser cohort keeps its own grid
    assert same[0] is img and same[2] == (6.0,) * 3
    _, _, sp3 = resample(np.zeros((10, 9, 7), np.float32), np.ones((10, 9, 7), bool), 2.0, 5.0)
    assert sp3 == pytest.approx((5.0, 4.5, 14 / 3))          # 4, 4, 3 voxels: exact spacing per axis


def test_config_checks_the_radiomics_keys():
    assert tuple(load_config(None).fewshot.radiomics_families) == FAMILIES
    assert "radiomics" in load_config(None).fewshot.baselines
    with pytest.raises(ConfigError, match="fewshot.radiomics_families.*must be among"):
        load_checked(None, ["fewshot.radiomics_families=[statistics,texture]"])
    for bad, key in (("fewshot.radiomics_bins=1", "radiomics_bins"), ("fewshot.radiomics_spacing=-1", "radiomics_spacing"),
                     ("fewshot.radiomics_families=[glcm,glcm]", "radiomics_families")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_demo_headline_shows_every_baseline_per_k(evaluated, tmp_path, monkeypatch, capsys):
    cfg, fs = evaluated
    summary = {"fewshot": summary_block(cfg, fs), "mlflow": {"fewshot_model_uri": "models:/x@champion",
                                                             "tracking_uri": "sqlite:///x.db"}}
    monkeypatch.setattr(cli, "run_demo", lambda *a, **k: summary)
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "radiomics" in line and "K=" not in line)
    assert header.split() == ["pretrained", "raw", "voxels", "radiomics"]
    rows = [line for line in lines if line.startswith("K=")]
    assert len(rows) == 2
    for row, k in zip(rows, ("1", "2")):
        r = summary["fewshot"]["radiomics"][k]
        assert row.count("[") == 3 and f"{r['balanced_accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" in row
