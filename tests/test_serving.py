"""``mlflow models serve -m models:/medcl-fewshot@champion --env-manager local`` on 127.0.0.1,
started once with a serving root (``MEDCL_SERVE_ROOT``) and a 1 MB request limit
(``MEDCL_SERVE_MAX_MB``), answers real HTTP requests: the scan's bytes (NIfTI, a DICOM file, a
zipped DICOM series) give the probabilities that the same scan's path under the root gives,
and arrays the same again. Paths out of the root (``..``, absolute, symbolic links), oversized
and malformed payloads are refused with HTTP 400 and one line that holds no stack trace and
no server location; the server goes on serving."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import free_port, stop_process_group, use_mlflow, wait_http
from support import head_volume

CLASSES = ["atrophy", "healthy", "lesion"]


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"series/{f.name}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(registered_models, tmp_path_factory):
    """The server, and its files: ``root`` (served), ``outside`` (a scan next to the root,
    never to be read), links from inside the root to it."""
    import nibabel as nib

    from dicomwrite import write_series

    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "root", base / "outside"
    vol = head_volume(seed=3)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    for folder in (root / "study", outside):
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(vol, affine), str(folder / "scan.nii.gz"))
        write_series(vol, affine, folder / "series")
    (root / "link-out.nii.gz").symlink_to(outside / "scan.nii.gz")
    (root / "link-in.nii.gz").symlink_to(root / "study" / "scan.nii.gz")
    (root / "dir-out").symlink_to(outside / "series")
    (root / "mixed").mkdir()                     # a DICOM folder with one slice linked from outside
    for i, f in enumerate(sorted((root / "study" / "series").iterdir())):
        (root / "mixed" / f.name).symlink_to(f if i else sorted((outside / "series").iterdir())[0])
    port = free_port()
    log = base / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_models["uri"], "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MEDCL_SERVE_ROOT": str(root), "MEDCL_SERVE_MAX_MB": "1",
           # as in an activated venv: the scoring server runs `uvicorn` from PATH
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/medcl-fewshot@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 180, log)
        yield {"url": f"http://127.0.0.1:{port}", "base": base, "root": root, "outside": outside, "volume": vol}
    finally:
        stop_process_group(proc)


def post(url: str, body: bytes | dict) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def invoke(url: str, payload: dict) -> list[dict]:
    status, body = post(url, payload)
    assert status == 200, body[:2000]
    return json.loads(body)["predictions"]


def _check(rows: list[dict], n: int) -> np.ndarray:
    assert len(rows) == n
    probs = np.array([[row[c] for c in CLASSES] for row in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-6) and (probs > 0).all()
    assert [row["label"] for row in rows] == [CLASSES[i] for i in probs.argmax(1)]
    return probs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_scan_bytes_paths_under_the_root_and_arrays_give_the_same_probabilities(served, registered_models, tmp_path):
    url, root = served["url"], served["root"]
    study = root / "study"
    nifti_bytes = (study / "scan.nii.gz").read_bytes()
    by_bytes = _check(invoke(url, {"inputs": [b64(nifti_bytes), b64(_zip(study / "series"))]}), 2)
    by_paths = _check(invoke(url, {"dataframe_split": {"columns": ["scan"], "data": [
        ["study/scan.nii.gz"], ["study/series"], [str(study / "scan.nii.gz")], ["link-in.nii.gz"]]}}), 4)
    by_array = _check(invoke(url, {"dataframe_split": {"columns": ["scan"], "data": [[served["volume"].tolist()]]},
                                   "params": {"spacing": 4.0}}), 1)
    one_dicom_file = sorted((study / "series").iterdir())[0].read_bytes()
    status, body = post(url, {"inputs": [b64(one_dicom_file)]})   # one slice is read, and is not a volume
    assert status == 400 and "input 0: " in body and str(root) not in body

    np.testing.assert_allclose(by_bytes[0], by_paths[0], atol=1e-6)      # NIfTI bytes == NIfTI path
    np.testing.assert_allclose(by_bytes[1], by_paths[1], atol=1e-6)      # zipped series == series folder
    assert np.allclose(by_paths[0], by_paths[2:], atol=1e-6)             # absolute path, link inside the root
    np.testing.assert_allclose(by_paths[0], by_array[0], atol=1e-5)
    np.testing.assert_allclose(by_paths[0], by_paths[1], atol=2e-3)      # NIfTI and DICOM of the same volume
    # the same numbers as the model loaded in this process, given the same bytes
    with use_mlflow(registered_models["uri"]):
        model = mlflow.pyfunc.load_model("models:/medcl-fewshot@champion")
        local = model.predict([nifti_bytes])
        example = Path(mlflow.artifacts.download_artifacts("models:/medcl-fewshot@champion",
                                                           dst_path=str(tmp_path / "model")))
    np.testing.assert_allclose(local[CLASSES].to_numpy()[0], by_bytes[0], atol=1e-6)
    # the model's serving input example is a valid request as it stands
    _check(invoke(url, json.loads((example / "serving_input_example.json").read_text())), 1)


def test_served_probabilities_are_calibrated_and_come_with_a_prediction_set(served, registered_models, tmp_path):
    import nibabel as nib

    from medcl.fewshot.ops import softmax
    from medcl.serving.inference import embed_inputs

    url = served["url"]
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(head_volume(seed=5), np.diag([4.0, 4.0, 4.0, 1.0])), str(nifti))
    scan = nifti.read_bytes()
    default = invoke(url, {"inputs": [b64(scan)]})[0]
    wide = invoke(url, {"inputs": [b64(scan)], "params": {"coverage": 0.999}})[0]
    head = registered_models["head"]
    feats = embed_inputs(registered_models["encoder"], [scan], registered_models["meta"])
    expected = softmax(head.decision_function(feats) / 2.0)[0]               # temperature 2, as registered
    assert np.allclose([default[c] for c in CLASSES], expected, atol=1e-5)
    assert not np.allclose(expected, softmax(head.decision_function(feats))[0], atol=1e-3)
    assert default["coverage"] == 0.9 and wide["coverage"] == 0.999
    small, large = set(default["prediction_set"].split("|")) - {""}, set(wide["prediction_set"].split("|"))
    assert small <= large and large == set(CLASSES)   # 30 calibration scans: 99.9% needs every class


def _bombs() -> dict[str, bytes]:
    """Small uploads that unpack to more than the 1 MB a request may use; a 0.4 MB scan that
    unpacks to 0.42 MB (twice in one request is too much)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((128, 128, 32), np.float32), np.eye(4))   # 2 MB of voxels
    nifti_gz = gzip.compress(img.to_bytes())
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (3 << 20))
    noise = nib.Nifti1Image(np.random.default_rng(0).random((48, 48, 48), np.float32), np.eye(4))
    return {"nifti_gz": nifti_gz, "zip": zipped.getvalue(), "noise": gzip.compress(noise.to_bytes())}


def _refusals(served) -> list[tuple[str, bytes | dict, str]]:
    """(what, request body, what the one-line answer must say; None where MLflow's scoring
    server answers before the model sees the request: a body that is not JSON, no input)."""
    root, outside = served["root"], served["outside"]
    good = (root / "study" / "scan.nii.gz").read_bytes()
    bombs = _bombs()
    paths = [("dot-dot", "../outside/scan.nii.gz"), ("dot-dot inside a path", "study/../../outside/scan.nii.gz"),
             ("absolute outside", str(outside / "scan.nii.gz")), ("system file", "/etc/passwd"),
             ("link to a file outside", "link-out.nii.gz"), ("link to a folder outside", "dir-out")]
    cases = [(what, {"inputs": [p]}, "outside the serving root") for what, p in paths]
    cases += [
        ("folder holding a link out", {"inputs": ["mixed"]}, "holds a link to outside the serving root"),
        ("missing under the root", {"inputs": ["study/nope.nii.gz"]}, "no such file or folder under the serving root"),
        ("oversized upload", {"inputs": [b64(os.urandom(3 << 19))]}, "more than the request may use (1 MB"),
        ("oversized in total", {"inputs": [b64(bombs["noise"])] * 2}, "input 1: the scan is 0.4 MB"),
        ("oversized array", {"dataframe_split": {"columns": ["scan"], "data": [[np.zeros((80, 80, 80)).tolist()]]}}, "input 0: the array is 2.0 MB"),
        ("gzip bomb", {"inputs": [b64(bombs["nifti_gz"])]}, "the decompressed scan is"),
        ("zip bomb", {"inputs": [b64(bombs["zip"])]}, "the unpacked series is"),
        ("not JSON", b'{"inputs": ["scan.nii.gz"', None),
        ("a number", {"inputs": [42]}, "input 0: expected scan bytes, a path or a 3D array"),
        ("a 2D array", {"dataframe_split": {"columns": ["scan"], "data": [[[[1.0, 2.0], [3.0, 4.0]]]]}}, "got list of shape (2, 2)"),
        ("an object", {"dataframe_split": {"columns": ["scan"], "data": [[{"a": 1}]]}}, "input 0: expected"),
        ("no scans", {"inputs": []}, None),
        ("bytes of no scan", {"inputs": [b64(b"%PDF-1.4 " * 64)]}, "not a NIfTI file, a DICOM file"),
        ("truncated NIfTI", {"inputs": [b64(good[: len(good) // 2])]}, "input 0: broken gzip data"),
        ("NIfTI header only", {"inputs": [b64(__import__("gzip").decompress(good)[:352])]},
         "input 0: unreadable NIfTI voxels (OSError: Expected 17280 bytes, got 0 bytes from upload/scan.nii)"),
        ("broken zip", {"inputs": [b64(_zip(root / "study" / "series")[:-300])]}, "input 0: broken zip archive"),
        ("zip of no DICOM", {"inputs": [b64(_zip_text())]}, "input 0: upload/series: expected one scan, found 0"),
        ("NUL in a path", {"inputs": ["study/scan.nii.gz\u0000.png"]}, "is not a path"),
    ]
    return cases


def _zip_text() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../etc/readme.txt", "not a scan " * 40)   # a member name is never used as a path
    return buf.getvalue()


def test_paths_out_of_the_root_oversized_and_malformed_payloads_are_refused_in_one_line(served):
    url, base = served["url"], served["base"]
    for what, body, says in _refusals(served):
        status, text = post(url, body)
        assert status == 400, f"{what}: HTTP {status} {text[:300]}"
        answer = json.loads(text)
        if says is not None:   # the model's refusal: one line
            assert answer["message"].startswith("input ") and says in answer["message"], f"{what}: {answer['message']}"
            assert "\n" not in answer["message"] and len(answer["message"]) < 400, f"{what}: {answer['message']}"
        assert "stack_trace" not in answer and "Traceback" not in text and 'File "' not in text, what
        mine = text
        for sent in (body.get("inputs", []) if isinstance(body, dict) else []):   # the client's own text
            mine = mine.replace(json.dumps(sent)[1:-1], "") if isinstance(sent, str) else mine
        for location in (str(base), os.path.realpath(base), "/tmp/", sys.prefix, "site-packages"):
            assert location not in mine, f"{what}: the answer names {location}: {text[:300]}"
    assert not (base / "etc").exists()
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as r:   # and it still serves
        assert r.status == 200
