"""``mlflow models serve -m models:/medcl-fewshot@champion --env-manager local`` on 127.0.0.1
answers real HTTP requests with class probabilities: a NIfTI path, a DICOM folder, and the
model's own serving input example (an array)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import free_port, stop_process_group, use_mlflow, wait_http
from support import head_volume

CLASSES = ["atrophy", "healthy", "lesion"]


@pytest.fixture(scope="module")
def served(registered_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = root / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_models["uri"], "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # as in an activated venv: the scoring server runs `uvicorn` from PATH
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/medcl-fewshot@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 180, log)
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_process_group(proc)


def invoke(url: str, payload: dict) -> list[dict]:
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        return json.loads(r.read())["predictions"]


def _check(rows: list[dict], n: int) -> np.ndarray:
    assert len(rows) == n
    probs = np.array([[row[c] for c in CLASSES] for row in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-6) and (probs > 0).all()
    assert [row["label"] for row in rows] == [CLASSES[i] for i in probs.argmax(1)]
    return probs


def test_served_model_answers_paths_dicom_and_arrays_over_http(served, registered_models, tmp_path):
    import nibabel as nib

    from dicomwrite import write_series

    url, _ = served
    vol = head_volume(seed=3)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(nifti))
    write_series(vol, affine, tmp_path / "series")

    by_split = _check(invoke(url, {"dataframe_split": {"columns": ["scan"],
                                                         "data": [[str(nifti)], [str(tmp_path / "series")]]}}), 2)
    by_inputs = _check(invoke(url, {"inputs": [str(nifti)]}), 1)
    by_array = _check(invoke(url, {"dataframe_split": {"columns": ["scan"], "data": [[vol.tolist()]]},
                                   "params": {"spacing": 4.0}}), 1)
    assert np.allclose(by_split[0], by_inputs[0], atol=1e-6) and np.allclose(by_split[0], by_array[0], atol=1e-5)
    assert np.allclose(by_split[0], by_split[1], atol=2e-3)   # NIfTI and DICOM of the same volume

    # the same numbers as the model loaded in this process
    with use_mlflow(registered_models["uri"]):
        local = mlflow.pyfunc.load_model("models:/medcl-fewshot@champion").predict([str(nifti)])
        example = Path(mlflow.artifacts.download_artifacts("models:/medcl-fewshot@champion",
                                                           dst_path=str(tmp_path / "model")))
    assert np.allclose(local[CLASSES].to_numpy()[0], by_split[0], atol=1e-6)
    # the model's serving input example is a valid request as it stands
    _check(invoke(url, json.loads((example / "serving_input_example.json").read_text())), 1)


def test_served_probabilities_are_calibrated_and_come_with_a_prediction_set(served, registered_models, tmp_path):
    import nibabel as nib

    from medcl.fewshot.ops import softmax
    from medcl.serving.inference import embed_inputs

    url, _ = served
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(head_volume(seed=5), np.diag([4.0, 4.0, 4.0, 1.0])), str(nifti))
    default = invoke(url, {"inputs": [str(nifti)]})[0]
    wide = invoke(url, {"inputs": [str(nifti)], "params": {"coverage": 0.999}})[0]
    head = registered_models["head"]
    feats = embed_inputs(registered_models["encoder"], [str(nifti)], registered_models["meta"])
    expected = softmax(head.decision_function(feats) / 2.0)[0]               # temperature 2, as registered
    assert np.allclose([default[c] for c in CLASSES], expected, atol=1e-5)
    assert not np.allclose(expected, softmax(head.decision_function(feats))[0], atol=1e-3)
    assert default["coverage"] == 0.9 and wide["coverage"] == 0.999
    small, large = set(default["prediction_set"].split("|")) - {""}, set(wide["prediction_set"].split("|"))
    assert small <= large and large == set(CLASSES)   # 30 calibration scans: 99.9% needs every class


def test_a_bad_request_is_an_error_response_not_a_crash(served):
    url, _ = served
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": ["/no/such/scan.nii.gz"]}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code in (400, 500)
    assert "scan.nii.gz" in err.value.read().decode()
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as r:   # and it still serves
        assert r.status == 200
