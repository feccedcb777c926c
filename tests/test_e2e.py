"""End to end on a tiny cohort: simulate -> ingest -> SimCLR -> few-shot -> registry -> report,
then a fresh Python process loads the registered model by alias and predicts a NIfTI file; the
demo's report passes the browser check; ``medcl fewshot``, ``report``, ``suggest-labels`` and
``predict`` (NIfTI file and DICOM folder) run on the demo's outputs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from medcl import tracking
from medcl.cli import main
from medcl.report.browser import browser_check, find_browser

TINY = ["demo.n_subjects=18", "data.spacing=6.0", "augment.view_size=16", "model.widen_factor=0.25",
        "train.epochs=2", "train.batch_size=4", "train.num_workers=0", "fewshot.shots=1,2",
        "fewshot.n_episodes=20", "fewshot.n_query=1", "fewshot.logreg_episodes=10", "fewshot.n_boot=200",
        "fewshot.scratch_episodes=3", "fewshot.scratch_steps=5", "fewshot.budget_random=20",
        "data.register=affine", "data.brain_mask=template",   # as configs/demo.yaml: registered to MNI,
        "data.normative=pool"]                                 # the encoder sees deviation maps
SECTIONS = ["summary", "cohort", "method", "curves", "metrics", "confusion", "roc", "reliability", "calibration",
            "saliency", "embeddings",
            "montage", "sensitivity", "budget", "training", "model-card", "notes", "config"]


@pytest.fixture(scope="module")
def demo_console(tmp_path_factory):
    """``medcl demo`` on the tiny config through the command line, in its own process, with its
    progress bars on: (output folder, its stdout, its stderr)."""
    out = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    env["MEDCL_SITE_SECRET_FILE"] = str(tmp_path_factory.mktemp("demo-secret") / "site_secret")
    proc = subprocess.run([sys.executable, "-m", "medcl.cli", "demo", "--out", str(out), *TINY], capture_output=True,
                          text=True, timeout=1200, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def demo_out(demo_console):
    out = demo_console[0]
    return out, json.loads((out / "summary.json").read_text())


def test_demo_console_shows_medcl_and_nothing_of_mlflow(demo_console):
    """One progress bar per stage (simulation, ingest, pretraining, few-shot), the headline table; no MLflow INFO line,
    no "Downloading artifacts" bar, no "Successfully registered"/"Created version"/"View run"
    line; every warning at most once."""
    _, stdout, stderr = demo_console
    lines = [part for line in (stdout + stderr).splitlines() for part in line.split("\r") if part.strip()]
    assert not [x for x in lines if re.search(r"\bINFO mlflow|Downloading artifacts|Successfully registered model|"
                                              r"Created version|View run|View experiment", x)], lines[:40]
    bars = {m.group(1) for x in lines if (m := re.match(r"(\S[^:|]*?): +\d+%\|", x))}
    assert bars == {"simulate", "ingest", "pretrain simclr", "few-shot"}, bars
    for desc in bars:   # one bar each: its counter never goes back
        counts = [int(m.group(1)) for x in lines if (m := re.match(rf"{desc}: +\d+%\|[^|]*\| *(\d+)/", x))]
        assert counts == sorted(counts) and counts[-1] > 0, (desc, counts)
    warned = [x for x in lines if re.search(r"\w+Warning: ", x)]
    assert len(warned) == len(set(warned)), warned
    assert "simulated pathology on real anatomy: not patient data" in stdout
    assert re.search(r"^K= 1  \d\.\d{3} \[", stdout, re.M) and "model: models:/medcl-fewshot@champion" in stdout


def _strict_load(text: str):
    def refuse(constant):
        raise AssertionError(f"summary.json holds {constant}: not strict JSON")
    return json.loads(text, parse_constant=refuse)


def test_summary_json_is_strict_json(tmp_path):
    """An undefined metric is null in summary.json: NaN and Infinity are not JSON."""
    from medcl.report.files import write_summary

    path = write_summary(tmp_path / "summary.json", {"auc": float("nan"), "x": [np.float32(0.5), float("inf")],
                                                     "n": np.int64(3), "a": np.array([1.0, np.nan])})
    assert _strict_load(path.read_text()) == {"auc": None, "x": [0.5, None], "n": 3, "a": [1.0, None]}


def test_summary_has_the_promised_shape(demo_out, demo_console):
    out, summary = demo_out
    _strict_load((out / "summary.json").read_text())
    # the console's headline table holds the summary's numbers
    for k, row in summary["fewshot"]["pretrained"].items():
        assert f"K={int(k):>2}  {row['balanced_accuracy']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]" in demo_console[1]
    assert summary["cohort"]["scans"] == 18 and summary["cohort"]["labels"] == {"atrophy": 6, "healthy": 6, "lesion": 6}
    for enc in ("pretrained", "random_init"):
        for k in ("1", "2"):
            r = summary["fewshot"][enc][k]
            assert 0.0 <= r["ci95"][0] <= r["balanced_accuracy"] <= r["ci95"][1] <= 1.0
    ml = summary["mlflow"]
    assert ml["tracking_uri"].startswith("sqlite:///") and ml["pretrain_run_id"]
    assert ml["fewshot_model_uri"] == "models:/medcl-fewshot@champion"
    reg = summary["registered_model"]                        # calibrated, with prediction sets
    assert reg["n_scans"] == 9 and reg["n_calibration"] == 3 and reg["temperature"] > 0
    assert {"ece", "ece_ci95"} <= set(reg["before"]) and 0 <= reg["sets"]["coverage"] <= 1
    assert set(summary["fewshot_calibration"]) == set(summary["fewshot_conformal"]) == {"1", "2"}
    lesions = summary["saliency"]["lesions"]                 # every lesion-class evaluation scan with a mask
    assert lesions["class"] == "lesion" and 0 <= lesions["n_scans"] <= 3


def test_one_seed_summary_has_the_seeds_block_of_the_unchanged_demo(demo_out):
    """``demo.seeds`` = 1 (the default): the seeds block repeats the few-shot numbers, sd null."""
    _, summary = demo_out
    seeds = summary["seeds"]
    assert seeds["n"] == 1 and seeds["train_seeds"] == [0] and len(seeds["per_seed"]) == 1
    entry = seeds["per_seed"][0]
    for src in ("pretrained", "random_init"):
        assert entry[src] == {k: {"balanced_accuracy": r["balanced_accuracy"], "ci95": r["ci95"]}
                              for k, r in summary["fewshot"][src].items()}
        assert entry["probe"][src]["ci95"] == summary["fewshot_ceiling"][src]["ci95"]
        assert seeds["mean_sd"][src] == {k: {"mean": r["balanced_accuracy"], "sd": None}
                                         for k, r in entry[src].items()}
    assert "seeds" not in summary["timings_seconds"]


def test_report_is_self_contained_and_says_simulated(demo_out):
    out, _ = demo_out
    html = (out / "report.html").read_text()
    assert "simulated pathology on real anatomy" in html
    saliency = re.search(r"<section id='saliency'>(.*?)</section>", html, re.S).group(1)
    overlays = saliency.count("<img")          # one correct and one wrong scan per class, where there is one
    assert 3 <= overlays <= 6 and "Where the model looks" in saliency and "ventricles" in saliency
    assert "Inside the simulated lesions" in saliency                 # checked against the demo's lesion masks
    # 5 metric curves, confusion, ROC, reliability, saliency overlays, map, montage, loss
    assert html.count("src='data:image/png;base64,") == 11 + overlays
    assert "http://" not in html and "https://" not in html
    assert re.findall(r"<section id='([^']+)'>", html) == SECTIONS
    for source in ("pretrained encoder", "random-init encoder", "raw voxels (PCA)", "radiomics (IBSI, MIRP)",
                   "3D ResNet from scratch", "linear probe on all labels"):
        assert source in html
    assert (out / "report_data" / "report_data.json").exists()


@pytest.mark.skipif(find_browser() is None and os.environ.get("MEDCL_REQUIRE_BROWSER") != "1",
                    reason="no Chromium (apt-get install chromium); CI installs it and requires it")
def test_demo_report_passes_the_browser_check_and_has_its_pdf(demo_out):
    out, summary = demo_out
    check = browser_check(out / "report.html")
    assert [s["id"] for s in check["sections"]] == SECTIONS
    overlays = sum(1 for i in check["images"] if i["alt"].startswith("saliency"))
    assert overlays >= 3 and check["broken"] == [] and check["empty_sections"] == []
    assert len(check["images"]) == 11 + overlays
    assert summary["report"]["pdf"] and (out / "report.pdf").read_bytes().startswith(b"%PDF-")


def test_summary_keeps_every_head_baseline_and_the_paired_differences(demo_out):
    _, summary = demo_out
    assert set(summary["fewshot_all_heads"]) == {"pretrained", "random_init", "raw_voxels", "radiomics"}
    assert set(summary["fewshot_all_heads"]["pretrained"]) == {"prototype", "prototype_euclidean", "logreg", "knn"}
    assert set(summary["fewshot"]["scratch"]) == {"1", "2"} and summary["fewshot"]["scratch"]["1"]["n_episodes"] == 3
    r = summary["fewshot_all_heads"]["pretrained"]["logreg"]["2"]
    assert r["n_episodes"] == 10 and set(r["sensitivity"]) == {"atrophy", "healthy", "lesion"}
    assert {(p["b"], p["shots"]) for p in summary["fewshot_paired"]} == {
        (b, k) for b in ("random_init", "raw_voxels", "radiomics", "scratch") for k in ("1", "2")}
    assert set(summary["label_budget"]) == {"1", "2"} and set(summary["fewshot_ceiling"]) == {
        "pretrained", "random_init", "raw_voxels", "radiomics"}


def test_no_source_file_names_in_outputs(demo_out):
    out, _ = demo_out
    for path in [out / "report.html", out / "summary.json", out / "cohort" / "manifest.csv"]:
        assert "demo00" not in path.read_text()


def test_fresh_process_loads_registered_model_by_alias(demo_out):
    out, summary = demo_out
    scan = sorted((out / "demo_src" / "nifti").glob("*.nii"))[0]
    code = (
        "import json, mlflow, sys\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model('models:/medcl-fewshot@champion')\n"
        "df = m.predict([sys.argv[2]])\n"
        "print(json.dumps(df.iloc[0].to_dict()))\n"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MEDCL_SERVE_ROOT": str(out)}   # paths under out/ only
    proc = subprocess.run([sys.executable, "-c", code, summary["mlflow"]["tracking_uri"], str(scan)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    probs = {k: v for k, v in row.items() if k not in ("label", "prediction_set", "coverage")}
    assert set(probs) == {"atrophy", "healthy", "lesion"} and row["coverage"] == 0.9
    assert set(row["prediction_set"].split("|")) <= set(probs)
    assert abs(sum(probs.values()) - 1) < 1e-5
    assert row["label"] == max(probs, key=probs.get)


def test_predict_on_a_raw_scan_gives_the_probabilities_the_evaluation_gave(demo_out):
    """`medcl predict` registers a raw scan exactly as ingest did and makes its deviation map
    from the normative reference the model carries: the registered model's probabilities for
    the source NIfTI file equal its head on the embedding of that scan's cohort cache entry (what
    evaluation embeds), up to the cache's float16 rounding. (Each test has its own site secret,
    so the cache entry is found by its voxels, not by its key.)"""
    import mlflow

    from medcl.data.cohort import Cohort
    from medcl.data.ingest import preprocess_file
    from medcl.fewshot.embed import embed_cohort
    from medcl.serving.inference import data_config

    out, summary = demo_out
    cohort = Cohort.load(out / "cohort")
    tracking.use_uri(summary["mlflow"]["tracking_uri"])
    model = mlflow.pyfunc.load_model(summary["mlflow"]["fewshot_model_uri"])
    inner = model.unwrap_python_model()
    assert cohort.reference is not None and inner.reference.sha256 == cohort.reference.sha256
    assert inner.meta["normative_sha256"] == cohort.reference.sha256
    cached = np.stack([cohort.intensity(i) for i in range(len(cohort))])
    for path in sorted((out / "demo_src" / "nifti").glob("*.nii"))[:4]:
        pre = preprocess_file(path, data_config(inner.meta))
        assert not np.allclose(pre.transform, np.eye(4)), "the scan is registered at prediction"
        gaps = np.abs(cached - pre.image[None]).mean(axis=(1, 2, 3))
        i = int(np.argmin(gaps))
        assert gaps[i] < 1e-2 < np.sort(gaps)[1], "exactly one cache entry holds this scan"
        assert np.allclose(cohort.transform(i), pre.transform, atol=1e-6)
        one = cohort.with_rows([cohort.rows[i]])
        evaluated = inner.head.predict_proba(embed_cohort(inner.encoder, one, inner.meta["view_size"]))[0]
        predicted = model.predict([path.read_bytes()]).iloc[0]   # the scan itself, as a client sends it
        got = np.array([predicted[str(c)] for c in inner.head.classes_])
        np.testing.assert_allclose(got, evaluated, atol=2e-3)


FEWSHOT_CLI = ["fewshot.n_episodes=20", "fewshot.n_query=1", "fewshot.logreg_episodes=5", "fewshot.n_boot=100",
               "fewshot.scratch_episodes=2", "fewshot.scratch_steps=3", "fewshot.budget_random=10", "fewshot.pdf=false",
               "fewshot.embedding_map=none"]


def test_fewshot_report_and_suggest_labels_commands(demo_out, tmp_path, capsys, monkeypatch):
    out, summary = demo_out
    uri = summary["mlflow"]["tracking_uri"]
    enc = "models:/medcl-encoder@champion"
    rc = main(["fewshot", "--encoder", enc, "--cohort", str(out / "cohort"), "--shots", "1,2", "--out",
               str(tmp_path / "fs"), "--tracking-uri", uri, "--quiet", *FEWSHOT_CLI])
    assert rc == 0, capsys.readouterr().err
    fs = _strict_load((tmp_path / "fs" / "summary.json").read_text())
    assert set(fs["fewshot"]) == {"pretrained", "random_init", "raw_voxels", "radiomics", "scratch"}
    assert (out / "cohort" / "radiomics").is_dir()       # the demo's radiomics features, reused here
    assert fs["fewshot"]["pretrained"]["2"]["n_episodes"] == 20 and fs["cohort"]["scans"] == 9
    # the run's saved report data renders the report again, from the run id alone
    assert main(["report", fs["mlflow"]["fewshot_run_id"], "--tracking-uri", fs["mlflow"]["tracking_uri"], "--out",
                 str(tmp_path / "again"),
                 "--no-pdf"]) == 0
    again = (tmp_path / "again" / "report.html").read_text()
    assert "balanced accuracy" in again and "raw voxels (PCA)" in again
    capsys.readouterr()
    assert main(["suggest-labels", "--cohort", str(out / "cohort"), "--encoder", enc, "--k", "3", "--all",
                 "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "rank,scan_key,subject_key" and len(lines) == 4
    manifest = (out / "cohort" / "manifest.csv").read_text()
    subjects = [line.split(",")[2] for line in lines[1:]]
    assert len(set(subjects)) == 3 and all(s in manifest for s in subjects)
    assert main(["suggest-labels", "--cohort", str(out / "cohort"), "--encoder", enc, "--k", "99", "--all",
                 "--tracking-uri", uri]) == 2
    assert "--k 99: must be between 1 and the 18 subjects" in capsys.readouterr().err


def test_predict_command_on_a_nifti_file_and_a_dicom_folder(demo_out, tmp_path, capsys, monkeypatch):
    import nibabel as nib

    from dicomwrite import write_series

    out, summary = demo_out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["mlflow"]["tracking_uri"])
    nifti = sorted((out / "demo_src" / "nifti").glob("*.nii"))[0]
    img = nib.load(nifti)
    write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, tmp_path / "dicom" / "series")
    capsys.readouterr()
    rc = main(["predict", "--tracking-uri", summary["mlflow"]["tracking_uri"], "--model",
               "models:/medcl-fewshot@champion", str(nifti), str(tmp_path / "dicom" / "series")])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row["probabilities"]) == {"atrophy", "healthy", "lesion"}
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-3
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert row["coverage"] == 0.9 and set(row["prediction_set"]) <= {"atrophy", "healthy", "lesion"}
    # the same scan as NIfTI and as DICOM gives (nearly) the same probabilities
    assert all(abs(rows[0]["probabilities"][c] - rows[1]["probabilities"][c]) < 0.05 for c in rows[0]["probabilities"])
    rc = main(["predict", "--tracking-uri", summary["mlflow"]["tracking_uri"], "--model",
               "models:/medcl-fewshot@champion", str(tmp_path / "missing.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith(str(tmp_path / "missing.nii.gz") + ": error: ")
