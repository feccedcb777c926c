"""Log and register medcl models as MLflow pyfunc models-from-code, with aliases.

- The model is *code* (``encoder_model.py``, ``fewshot_model.py``, and the medcl package as
  ``code_paths``), never a pickled object. Weights are a state dict (loaded with
  ``weights_only=True``) and the head plain arrays (``allow_pickle=False``), so a model pulled
  from the registry unpickles nothing.
- Signature: one input column of scans (the bytes of NIfTI or DICOM files, 3D arrays in RAS
  voxel order, or paths under ``MEDCL_SERVE_ROOT``: :mod:`medcl.serving.scan_input`) and the
  param ``spacing`` (mm, for arrays); the input example is a small synthetic
  volume, so it runs anywhere (MLflow runs it when the model is logged).
- ``pip_requirements`` are explicit (the versions of this environment), and each model carries
  a model card (``artifacts/model_card.md``, also the version's description).
- Aliases: a new version becomes ``champion`` when the model has none, else ``challenger``;
  ``medcl promote NAME VERSION --alias champion`` (:func:`promote`) moves it.

When the tracking server is unreachable (after retries) a model cannot be registered; it is
saved as a complete MLflow model under ``OUT/unregistered-models/`` instead and a warning says
where, so nothing is lost and training does not fail.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

import medcl
from medcl import tracking
from medcl.data.normative import NormativeReference
from medcl.models import Encoder
from medcl.serving.inference import check_reference
from medcl.serving.outputs import DEFAULT_COVERAGE
from medcl.tracking.spool import RunHandle, TrackingWarning, call_with_retry, retry_policy

HERE = Path(__file__).parent
PACKAGE_DIR = Path(medcl.__file__).parent
# One unnamed column, so that ``model.predict([scan_bytes])`` works as well as a DataFrame.
INPUT_SCHEMA = Schema([ColSpec(AnyType())])
ALIASES = ("champion", "challenger")
CODE = {"encoder": HERE / "encoder_model.py", "fewshot": HERE / "fewshot_model.py"}


def pip_requirements() -> list[str]:
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    for pkg in ("monai", "nibabel", "pydicom", "scikit-learn", "mlflow", "numpy", "scipy", "pandas", "pyyaml"):
        pins.append(f"{pkg}=={version(pkg)}")
    return pins


def params_schema(meta: dict, coverage: bool = False) -> ParamSchema:
    """``spacing`` (mm, for array input); ``coverage`` of the prediction sets when ``coverage``."""
    specs = [ParamSpec("spacing", "double", float(meta["data"]["spacing"]))]
    return ParamSchema(specs + ([ParamSpec("coverage", "double", DEFAULT_COVERAGE)] if coverage else []))


def example_volume(spacing: float, size_mm: float = 48.0) -> np.ndarray:
    """A synthetic head-like ellipsoid (smooth, with a darker core) at ``spacing`` mm: an input
    example that preprocesses like a scan and runs anywhere. Not anatomy."""
    n = max(12, int(round(size_mm / spacing)))
    g = (np.arange(n) - (n - 1) / 2) / (n / 2)
    x, y, z = np.meshgrid(g, g * 1.15, g * 1.05, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    vol = np.clip(1.2 - r * 1.25, 0, None) * 100 * (1 - 0.4 * np.exp(-(r / 0.3) ** 2))
    return vol.astype(np.float32).round(1)


def input_example(meta: dict):
    import pandas as pd

    spacing = float(meta["data"]["spacing"])
    return pd.DataFrame({"scan": [example_volume(spacing).tolist()]}), {"spacing": spacing}


def model_card(kind: str, registered_name: str | None, meta: dict, classes: list | None = None,
               info: dict | None = None) -> str:
    """A markdown model card: what the model is, what it was trained on, how it did, how to
    call it, and what it must not be used for. ``info`` may hold ``summary``, ``training_data``,
    ``metrics`` (name -> value or text), ``lineage`` (name -> value) and ``limitations`` (list)."""
    info = info or {}
    name = registered_name or f"medcl-{kind}"
    what = ("a 3D MRI encoder pretrained without labels (scan -> representation)" if kind == "encoder"
            else "a few-shot diagnosis classifier: a frozen pretrained encoder and a linear head fitted on a "
                 "handful of labelled scans per class (scan -> class probabilities and label)")
    lines = [f"# Model card: {name}", "", info.get("summary", f"{name} is {what}."), "",
             "## Intended use",
             "Research on MRI representation learning and few-shot classification. Not a medical device; "
             "not for clinical decisions.", "",
             "## Model",
             f"- kind: {kind}",
             f"- encoder: MONAI 3D {meta['arch']} (widen factor {meta.get('widen_factor', 1.0)}, conv1 temporal "
             f"stride {meta['conv1_t_stride']}), input view {meta['view_size']}^3 voxels",
             f"- preprocessing: RAS, {meta['data']['spacing']} mm isotropic, head crop, intensity z-scored in the "
             "foreground (as `medcl ingest`)"]
    if classes is not None:
        lines.append(f"- classes: {', '.join(str(c) for c in classes)}")
    lines += ["", "## Training data", info.get("training_data", "Not recorded."), ""]
    if info.get("metrics"):
        lines += ["## Evaluation"] + [f"- {k}: {v}" for k, v in info["metrics"].items()] + [""]
    if info.get("lineage"):
        lines += ["## Lineage"] + [f"- {k}: {v}" for k, v in info["lineage"].items()] + [""]
    out = ("one column `h0`..`h{D-1}` per feature" if kind == "encoder"
           else "one column per class with its (calibrated) probability, `label` (the most probable class) and, "
                "when the model has calibration scans, `prediction_set` (the classes of the conformal set at param "
                "`coverage`, `|`-joined) and `coverage`")
    lines += ["## Input and output",
              "Input: one column of scans, each the bytes of a NIfTI file, of a DICOM file or of a zip of one DICOM "
              "series (base64 text in a JSON request), or a 3D array in RAS voxel order; param `spacing` (mm, default "
              f"{meta['data']['spacing']}) for arrays. Paths are read only under the folder named by `MEDCL_SERVE_ROOT`. "
              f"Output: {out}.", "",
              "```python", "import mlflow",
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion')",
              "model.predict([open('scan.nii.gz', 'rb').read()])", "```", "",
              "## Limitations"]
    lines += [f"- {x}" for x in info.get("limitations", [])] or ["- None recorded."]
    lines += ["- Accuracy on other scanners, sequences, populations or diseases is unknown until measured.", "",
              "## Requirements", ", ".join(pip_requirements()), ""]
    return "\n".join(lines)


def _with_tracking(fn, what: str):
    """(ok, result or exception): through the medcl tracker's retry/offline state if there is one."""
    t = tracking.tracker()
    if t is not None:
        return t.online(fn, what)
    retries, backoff, _ = retry_policy()
    try:
        return True, call_with_retry(fn, retries, backoff)
    except Exception as exc:
        return False, exc


def _save_locally(kind: str, registered_name: str | None, kwargs: dict, exc: BaseException) -> Path | None:
    t = tracking.tracker()
    base = t.spool_path.parent if t is not None else Path.cwd()
    dest = base / "unregistered-models" / f"{registered_name or kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        mlflow.pyfunc.save_model(path=str(dest), **kwargs)
    except Exception as err:
        warnings.warn(f"MLflow unreachable ({exc}) and the model could not be saved locally either: {err}",
                      TrackingWarning, stacklevel=3)
        return None
    warnings.warn(f"MLflow unreachable, {registered_name or kind} was not registered ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). The complete model is saved at {dest} "
                  f"(mlflow.pyfunc.load_model('{dest}') loads it).", TrackingWarning, stacklevel=3)
    return dest


def _log(kind: str, artifacts: dict[str, str], signature: ModelSignature, meta: dict,
         registered_name: str | None, run: RunHandle | None, card: str, version_tags: dict | None):
    kwargs = dict(python_model=str(CODE[kind]), artifacts=artifacts, code_paths=[str(PACKAGE_DIR)],
                  signature=signature, input_example=input_example(meta), pip_requirements=pip_requirements(),
                  metadata={"medcl_kind": kind, "medcl_version": medcl.__version__})

    def log():
        info = Model.log(artifact_path=None, name=kind, flavor=mlflow.pyfunc, run_id=run.run_id if run else None,
                         registered_model_name=registered_name, flavor_name="pyfunc.ModelFromCode", **kwargs)
        if registered_name and info.registered_model_version is not None:
            client = mlflow.MlflowClient()
            client.update_model_version(registered_name, str(info.registered_model_version), description=card)
            for k, v in (version_tags or {}).items():
                client.set_model_version_tag(registered_name, str(info.registered_model_version), k, str(v))
        return info

    if run is not None and run.run_id is None:
        t = tracking.tracker()
        if t is not None:
            t.maybe_replay(force=True)   # the run may exist on the server by now
    if run is not None and run.run_id is None:
        ok, result = False, RuntimeError(f"run '{run.name}' is not on the tracking server yet")
    else:
        ok, result = _with_tracking(log, f"log {kind} model")
    if ok:
        return result
    _save_locally(kind, registered_name, kwargs, result)
    return None


def log_encoder(encoder: Encoder, meta: dict, registered_name: str | None = None, run: RunHandle | None = None,
                card_info: dict | None = None, version_tags: dict | None = None,
                reference: NormativeReference | None = None):
    """Log (and optionally register) the encoder; MLflow's ModelInfo, or None when the server
    was unreachable (the model is then saved locally, see the module docstring). ``reference``:
    the cohort's normative reference (``data.normative: pool``), an artifact of the model."""
    out_cols = Schema([ColSpec("float", f"h{i}") for i in range(encoder.feature_dim)])
    card = model_card("encoder", registered_name, meta, info=card_info)
    with tempfile.TemporaryDirectory() as tmp:
        arts = _write_common(Path(tmp), encoder, meta, card, reference)
        return _log("encoder", arts, ModelSignature(INPUT_SCHEMA, out_cols, params=params_schema(meta)), meta,
                    registered_name, run, card, version_tags)


def log_fewshot(encoder: Encoder, head, meta: dict, registered_name: str | None = None,
                run: RunHandle | None = None, card_info: dict | None = None, version_tags: dict | None = None,
                reference: NormativeReference | None = None):
    """Log (and optionally register) encoder + linear head as the diagnosis model (``reference``:
    as :func:`log_encoder`)."""
    sets = bool(len(getattr(head, "conformal_scores_", ())))
    cols = [ColSpec("double", str(c)) for c in head.classes_] + [ColSpec("string", "label")]
    cols += [ColSpec("string", "prediction_set"), ColSpec("double", "coverage")] if sets else []
    card = model_card("fewshot", registered_name, meta, classes=head.classes_.tolist(), info=card_info)
    with tempfile.TemporaryDirectory() as tmp:
        arts = _write_common(Path(tmp), encoder, meta, card, reference)
        head.save(Path(tmp) / "head.npz")
        arts["head"] = str(Path(tmp) / "head.npz")
        return _log("fewshot", arts, ModelSignature(INPUT_SCHEMA, Schema(cols), params=params_schema(meta, sets)), meta,
                    registered_name, run, card, version_tags)


def _write_common(tmp: Path, encoder: Encoder, meta: dict, card: str,
                  reference: NormativeReference | None = None) -> dict[str, str]:
    check_reference(meta, reference, "logging the model")
    torch.save(encoder.state_dict(), tmp / "encoder_weights.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    (tmp / "model_card.md").write_text(card)
    arts = {"weights": str(tmp / "encoder_weights.pt"), "meta": str(tmp / "meta.json"),
            "model_card": str(tmp / "model_card.md")}
    if reference is not None:
        reference.save(tmp / "normative.npz")
        arts["normative"] = str(tmp / "normative.npz")
    return arts


def alias_new_version(registered_name: str, version_: str | int, alias: str = "champion") -> str | None:
    """Give a newly registered version its alias: ``alias`` (normally ``champion``) when no
    other version holds it, else ``challenger``. Returns the alias set, or None (with a
    warning) when the registry is unreachable."""
    def assign():
        client = mlflow.MlflowClient()
        current = client.get_registered_model(registered_name).aliases
        chosen = alias
        if alias == "champion" and current.get("champion") not in (None, str(version_)):
            chosen = "challenger"
        client.set_registered_model_alias(registered_name, chosen, str(version_))
        return chosen

    ok, result = _with_tracking(assign, "set alias")
    if ok:
        return result
    warnings.warn(f"could not set an alias on {registered_name} version {version_}: {result}", TrackingWarning,
                  stacklevel=2)
    return None


def promote(registered_name: str, version_: str | int, alias: str = "champion",
            client: mlflow.MlflowClient | None = None) -> dict[str, tuple[str | None, str | None]]:
    """Point ``alias`` at ``version_``; promoting the challenger to champion also removes its
    challenger alias. Returns ``{alias: (old version, new version)}`` for every alias changed."""
    client = client or mlflow.MlflowClient()
    version_ = str(version_)
    client.get_model_version(registered_name, version_)  # a clear error if it does not exist
    before = client.get_registered_model(registered_name).aliases
    client.set_registered_model_alias(registered_name, alias, version_)
    changes = {alias: (before.get(alias), version_)}
    if alias == "champion" and before.get("challenger") == version_:
        client.delete_registered_model_alias(registered_name, "challenger")
        changes["challenger"] = (version_, None)
    return changes
