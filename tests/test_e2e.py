"""End to end on a tiny cohort: simulate -> ingest -> SimCLR -> few-shot -> registry -> report,
then a fresh Python process loads the registered model by alias and predicts a NIfTI file."""

import json
import os
import subprocess
import sys

import pytest

from medcl.config import load_config
from pipelines.demo import run_demo

TINY = ["demo.n_subjects=18", "data.spacing=6.0", "augment.view_size=16", "model.widen_factor=0.25",
        "train.epochs=2", "train.batch_size=4", "train.num_workers=0", "fewshot.shots=1,2",
        "fewshot.n_episodes=20", "fewshot.n_query=1"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    summary = run_demo(load_config(None, TINY), out, progress=False)
    return out, summary


def test_summary_has_the_promised_shape(demo_out):
    out, summary = demo_out
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["cohort"]["scans"] == 18 and summary["cohort"]["labels"] == {"atrophy": 6, "healthy": 6, "lesion": 6}
    for enc in ("pretrained", "random_init"):
        for k in ("1", "2"):
            r = summary["fewshot"][enc][k]
            assert 0.0 <= r["ci95"][0] <= r["balanced_accuracy"] <= r["ci95"][1] <= 1.0
    ml = summary["mlflow"]
    assert ml["tracking_uri"].startswith("sqlite:///") and ml["pretrain_run_id"]
    assert ml["fewshot_model_uri"] == "models:/medcl-fewshot@champion"


def test_report_is_self_contained_and_says_simulated(demo_out):
    out, _ = demo_out
    html = (out / "report.html").read_text()
    assert "simulated pathology on real anatomy" in html
    assert html.count("src='data:image/png;base64,") >= 4  # curves x2 heads, confusion, loss, montage
    assert "http://" not in html and "https://" not in html
    for section in ("summary", "confusion", "cohort", "training", "montage", "config"):
        assert f"id='{section}'" in html


def test_no_source_file_names_in_outputs(demo_out):
    out, _ = demo_out
    for path in [out / "report.html", out / "summary.json", out / "cohort" / "manifest.csv"]:
        assert "demo00" not in path.read_text()


def test_fresh_process_loads_registered_model_by_alias(demo_out):
    out, summary = demo_out
    scan = sorted((out / "demo_src" / "nifti").glob("*.nii.gz"))[0]
    code = (
        "import json, mlflow, sys\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model('models:/medcl-fewshot@champion')\n"
        "df = m.predict([sys.argv[2]])\n"
        "print(json.dumps(df.iloc[0].to_dict()))\n"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", code, summary["mlflow"]["tracking_uri"], str(scan)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    probs = {k: v for k, v in row.items() if k != "label"}
    assert set(probs) == {"atrophy", "healthy", "lesion"}
    assert abs(sum(probs.values()) - 1) < 1e-5
    assert row["label"] == max(probs, key=probs.get)
