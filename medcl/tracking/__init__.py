"""MLflow: where runs go, and logging that never kills training.

The default store is sqlite in the output folder (``sqlite:///OUT/mlflow.db``, artifacts in
``OUT/mlartifacts``), so no server is needed; ``MLFLOW_TRACKING_URI`` points medcl at a
server instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402

_warned: set[str] = set()


def tracking_uri_for(out_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def setup(out_dir: Path, experiment: str) -> str:
    """Point MLflow at the store for ``out_dir`` and select ``experiment``; returns the URI."""
    uri = tracking_uri_for(out_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None if "MLFLOW_TRACKING_URI" in os.environ else (Path(out_dir).resolve() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def _safe(what: str, fn, *args, **kwargs) -> None:
    if mlflow.active_run() is None:
        return
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # tracking must never stop training
        if what not in _warned:
            _warned.add(what)
            warnings.warn(f"MLflow {what} failed, training goes on: {type(exc).__name__}: {exc}", stacklevel=3)


def log_metrics(metrics: dict[str, float], step: int) -> None:
    _safe("log_metrics", mlflow.log_metrics, metrics, step=step)


def log_params(params: dict) -> None:
    _safe("log_params", mlflow.log_params, {k: str(v)[:500] for k, v in params.items()})


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    _safe("log_artifact", mlflow.log_artifact, str(path), artifact_path)
