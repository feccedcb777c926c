"""Log and register medcl models as MLflow pyfunc models-from-code.

Weights are state dicts (loaded with ``weights_only=True``) and heads are plain arrays, so a
model pulled from the registry never unpickles code. ``pip_requirements`` are explicit (the
versions of this environment) so that MLflow does not guess them.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import medcl
from medcl.models import Encoder

HERE = Path(__file__).parent
PACKAGE_DIR = Path(medcl.__file__).parent
INPUT_SCHEMA = Schema([ColSpec("string", "path")])


def pip_requirements() -> list[str]:
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    for pkg in ("monai", "nibabel", "pydicom", "scikit-learn", "mlflow", "numpy", "scipy", "pandas", "pyyaml"):
        pins.append(f"{pkg}=={version(pkg)}")
    return pins


def _log(name: str, code: Path, artifacts: dict[str, str], signature: ModelSignature,
         registered_name: str | None):
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(code), artifacts=artifacts, code_paths=[str(PACKAGE_DIR)],
        signature=signature, pip_requirements=pip_requirements(),
        registered_model_name=registered_name)


def _write_common(tmp: Path, encoder: Encoder, meta: dict) -> dict[str, str]:
    torch.save(encoder.state_dict(), tmp / "encoder_weights.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return {"weights": str(tmp / "encoder_weights.pt"), "meta": str(tmp / "meta.json")}


def log_encoder(encoder: Encoder, meta: dict, registered_name: str | None = None):
    """Log (and optionally register) the encoder; returns MLflow's ModelInfo."""
    out_cols = Schema([ColSpec("float", f"h{i}") for i in range(encoder.feature_dim)])
    with tempfile.TemporaryDirectory() as tmp:
        arts = _write_common(Path(tmp), encoder, meta)
        return _log("encoder", HERE / "encoder_model.py", arts, ModelSignature(INPUT_SCHEMA, out_cols), registered_name)


def log_fewshot(encoder: Encoder, head, meta: dict, registered_name: str | None = None):
    """Log (and optionally register) encoder + linear head as the diagnosis model."""
    cols = [ColSpec("double", str(c)) for c in head.classes_] + [ColSpec("string", "label")]
    with tempfile.TemporaryDirectory() as tmp:
        arts = _write_common(Path(tmp), encoder, meta)
        head.save(Path(tmp) / "head.npz")
        arts["head"] = str(Path(tmp) / "head.npz")
        return _log("fewshot", HERE / "fewshot_model.py", arts, ModelSignature(INPUT_SCHEMA, Schema(cols)), registered_name)


def set_alias(registered_name: str, version_: str | int, alias: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, str(version_))
