"""Registered models read back: an encoder (with its metadata) from an MLflow model URI."""

from __future__ import annotations

import mlflow

from medcl.models import Encoder

__all__ = ["load_encoder_uri"]


def load_encoder_uri(uri: str) -> tuple[Encoder, dict]:
    """``(encoder, meta)`` from an MLflow model URI (``models:/NAME@ALIAS``, ``runs:/ID/encoder``)
    or a local MLflow model folder logged by medcl (encoder or few-shot model), read from the
    store MLflow's client points at (the CLI sets it once, :func:`medcl.tracking.use_uri`)."""
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MLflow raises many types; one line that names the URI
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{uri}: cannot load the encoder model ({msg[:300]})") from None
    inner = model.unwrap_python_model()
    if not hasattr(inner, "encoder") or not hasattr(inner, "meta"):
        raise ValueError(f"{uri}: not a medcl encoder or few-shot model")
    return inner.encoder.eval(), inner.meta
