"""The model registry on a real MLflow server: what is registered with each model (signature,
input example, requirements, model card, lineage), a fresh process that knows only the registry
URI loading and running both models on NIfTI paths, DICOM folders and arrays without unpickling
anything, and the champion/challenger aliases with ``medcl promote``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import TINY_META_SPACING, tiny_encoder_and_head, tiny_meta, use_mlflow
from support import head_volume

from medcl.serving import registry


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The same volume as a NIfTI file, a DICOM series folder and an array (RAS, 4 mm)."""
    from dicomwrite import write_series

    root = tmp_path_factory.mktemp("scans")
    vol = head_volume(seed=0)   # 64 x 72 x 60 mm at 4 mm, a bright off-centre blob
    affine = np.diag([TINY_META_SPACING] * 3 + [1.0])
    nifti = root / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(nifti))
    write_series(vol, affine, root / "dicom_series")
    return {"nifti": nifti, "dicom": root / "dicom_series", "array": vol}


def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri, uri)


def test_versions_carry_signature_example_requirements_card_and_lineage(registered_models, tmp_path):
    uri = registered_models["uri"]
    client = _client(uri)
    assert registered_models["aliases"] == ("champion", "champion")
    for name, kind in (("medcl-encoder", "encoder"), ("medcl-fewshot", "fewshot")):
        mv = client.get_model_version_by_alias(name, "champion")
        with use_mlflow(uri):
            dest = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / kind)))
        mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
        sig = mlmodel["signature"]
        params = [{"name": "spacing", "type": "double", "default": TINY_META_SPACING, "shape": None}]
        if kind == "fewshot":                                   # a head with calibration scans: its sets
            params.append({"name": "coverage", "type": "double", "default": 0.9, "shape": None})
        assert json.loads(sig["params"]) == params
        outputs = [c["name"] for c in json.loads(sig["outputs"])]
        if kind == "fewshot":
            assert outputs == ["atrophy", "healthy", "lesion", "label", "prediction_set", "coverage"]
        else:
            assert outputs == [f"h{i}" for i in range(128)]
        # the input example is a synthetic volume that runs anywhere, stored with its serving form
        example = json.loads((dest / "serving_input_example.json").read_text())
        assert np.asarray(example["dataframe_split"]["data"][0][0]).ndim == 3
        assert example["params"] == {"spacing": TINY_META_SPACING}
        # explicit pins, not MLflow's guess
        assert (dest / "requirements.txt").read_text().split() == registry.pip_requirements()
        # models from code: the python model is a source file, weights a state dict, head arrays
        pyfunc = mlmodel["flavors"]["python_function"]
        assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
        assert (dest / f"{kind}_model.py").exists() and (dest / "code" / "medcl" / "serving" / "inference.py").exists()
        assert not list(dest.rglob("*.pkl")) and not list(dest.rglob("*.pickle"))
        card = (dest / "artifacts" / "model_card.md").read_text()
        for section in ("## Intended use", "## Training data", "## Limitations", "## Input and output"):
            assert section in card
        assert "Not a medical device" in card
        assert mv.description == card
        assert mv.tags["medcl.pretrain_run_id"] == registered_models["pretrain_run_id"]
        assert mv.run_id in (registered_models["pretrain_run_id"], registered_models["fewshot_run_id"])
    fs = client.get_model_version_by_alias("medcl-fewshot", "champion")
    assert fs.tags["medcl.encoder_uri"] == "models:/medcl-encoder/1"
    run = client.get_run(registered_models["fewshot_run_id"])
    assert run.data.tags["medcl.pretrain_run_id"] == registered_models["pretrain_run_id"]
    assert run.data.tags["medcl.encoder_uri"] == "models:/medcl-encoder/1"


FRESH = r"""
import json, pickle, sys
def _forbidden(*a, **k):
    raise AssertionError("something was unpickled")
class _NoUnpickler(pickle.Unpickler):
    def __init__(self, *a, **k):
        _forbidden()
pickle.load = pickle.loads = _forbidden
pickle.Unpickler = _NoUnpickler
try:
    import cloudpickle
    cloudpickle.load = cloudpickle.loads = _forbidden
except ImportError:
    pass
import numpy as np, pandas as pd, mlflow
nifti, dicom, array = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
fs = mlflow.pyfunc.load_model("models:/medcl-fewshot@champion")
enc = mlflow.pyfunc.load_model("models:/medcl-encoder@champion")
out = {
    "paths": fs.predict([nifti, dicom]).to_dict("records"),
    "array": fs.predict(pd.DataFrame({"scan": [array]}), params={"spacing": 4.0}).to_dict("records"),
    "array_half_spacing": fs.predict(pd.DataFrame({"scan": [array]}), params={"spacing": 2.0}).to_dict("records"),
    "encoder": enc.predict([nifti]).to_numpy().tolist(),
}
print("RESULT " + json.dumps(out))
"""


def test_fresh_process_with_only_the_registry_uri_runs_both_models_without_unpickling(registered_models, scans,
                                                                                       tmp_path):
    np.save(tmp_path / "array.npy", scans["array"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDCL_"))}
    env.update({"MLFLOW_TRACKING_URI": registered_models["uri"], "MLFLOW_DISABLE_TELEMETRY": "true",
                "MEDCL_SERVE_ROOT": str(scans["nifti"].parent)})   # paths are read under this root only
    proc = subprocess.run([sys.executable, "-c", FRESH, str(scans["nifti"]), str(scans["dicom"]),
                           str(tmp_path / "array.npy")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    classes = ["atrophy", "healthy", "lesion"]
    rows = out["paths"] + out["array"]
    for row in rows:
        probs = np.array([row[c] for c in classes])
        assert abs(probs.sum() - 1) < 1e-6 and (probs > 0).all()
        assert row["label"] == classes[int(probs.argmax())]
    nifti, dicom, array = (np.array([r[c] for c in classes]) for r in rows)
    # the same volume read from NIfTI, from a DICOM series and given as an array agrees
    assert np.allclose(nifti, array, atol=1e-6)
    assert np.allclose(nifti, dicom, atol=2e-3)
    # ... and the spacing param is honoured (the array is then a head twice as small)
    half = np.array([out["array_half_spacing"][0][c] for c in classes])
    assert not np.allclose(half, array, atol=1e-4)
    # the encoder in the registry is the one that was logged
    from medcl.serving.inference import embed_inputs
    from medcl.serving.scan_input import trusted_paths

    with trusted_paths():
        expected = embed_inputs(registered_models["encoder"], [scans["nifti"]], registered_models["meta"])
    assert np.allclose(np.asarray(out["encoder"]), expected, atol=1e-5)


def test_bad_input_is_a_clear_error(registered_models, scans, tmp_path, monkeypatch):
    """Without a serving root the model reads no path, even in-process; it reads the scan's
    bytes; a caller that trusts its paths (``medcl predict``) reads them anywhere."""
    import pandas as pd

    from medcl.serving.scan_input import InputRefused, trusted_paths

    monkeypatch.delenv("MEDCL_SERVE_ROOT", raising=False)
    with use_mlflow(registered_models["uri"]):
        model = mlflow.pyfunc.load_model("models:/medcl-fewshot@champion")
    with pytest.raises(InputRefused, match=r"^input 0: paths are not accepted by this server; send the scan's bytes"):
        model.predict([str(scans["nifti"])])
    by_bytes = model.predict([scans["nifti"].read_bytes()])
    with trusted_paths():
        np.testing.assert_allclose(model.predict([str(scans["nifti"])]).iloc[:, :3], by_bytes.iloc[:, :3], atol=1e-6)
        with pytest.raises(InputRefused, match="no such file|does not exist|not found|No such"):
            model.predict([str(tmp_path / "missing.nii.gz")])
    with pytest.raises(InputRefused, match="3D array"):
        model.predict(pd.DataFrame({"scan": [np.zeros((4, 4))]}))


def test_new_version_is_challenger_and_promote_moves_champion(registered_models, tmp_path, monkeypatch, capsys):
    import medcl.tracking as tracking
    from medcl.cli import main

    uri = registered_models["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MEDCL_SYSTEM_METRICS", "false")
    monkeypatch.setattr(tracking, "_tracker", None)
    monkeypatch.setattr(tracking, "_stack", [])
    name = "medcl-fewshot-promote"
    enc, head = tiny_encoder_and_head(seed=1)
    tracking.setup(tracking.resolve_uri(None, tmp_path), "medcl-test-registry", tmp_path)
    versions = []
    try:
        for _ in range(2):
            with tracking.start_run("fewshot-promote", log_environment=False) as run:
                info = registry.log_fewshot(enc, head, tiny_meta(), name, run=run)
                versions.append((info.registered_model_version, registry.alias_new_version(name, info.registered_model_version)))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert [a for _, a in versions] == ["champion", "challenger"]
    v1, v2 = (str(v) for v, _ in versions)
    client = _client(uri)
    assert client.get_registered_model(name).aliases == {"champion": v1, "challenger": v2}

    assert main(["promote", name, v2, "--alias", "champion", "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert f"{name}@champion: version {v1} -> {v2}" in printed
    assert f"{name}@challenger: version {v2} -> -" in printed
    assert client.get_registered_model(name).aliases == {"champion": v2}

    assert main(["promote", name, v1, "--alias", "challenger", "--tracking-uri", uri]) == 0
    assert client.get_registered_model(name).aliases == {"champion": v2, "challenger": v1}
    assert main(["promote", name, "99", "--tracking-uri", uri]) == 1
    assert "version 99" in capsys.readouterr().err
    assert client.get_registered_model(name).aliases == {"champion": v2, "challenger": v1}
