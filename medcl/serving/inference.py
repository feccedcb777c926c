"""What a registered model does at prediction time: scans in, representations out.

Shared by the encoder and the few-shot pyfunc models, and by ``medcl predict``: a scan is
preprocessed exactly as ingest did (:func:`medcl.data.ingest.preprocess`) and embedded from
its whole-foreground view, exactly as few-shot evaluation did.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from medcl.augment import eval_view
from medcl.config import DataConfig
from medcl.data.ingest import Preprocessed, preprocess, preprocess_file
from medcl.data.normative import NormativeReference
from medcl.fewshot.embed import embed_views
from medcl.models import Encoder
from medcl.serving.scan_input import InputRefused, RequestBudget, opened


def load_encoder(weights: str | Path, meta: dict) -> Encoder:
    """An encoder from a state-dict file; ``weights_only`` so no pickled code ever runs."""
    enc = Encoder(meta["arch"], meta["conv1_t_stride"], meta.get("widen_factor", 1.0))
    enc.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return enc.eval()


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def data_config(meta: dict) -> DataConfig:
    """The model's preprocessing config; keys this version of medcl does not know are ignored
    (a model registered by a newer medcl still loads), missing ones take their defaults."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["data"].items() if k in known})


def check_reference(meta: dict, reference: NormativeReference | None, where: str) -> None:
    """A model trained on deviation maps (``data.normative: pool``) must be given the normative
    reference it was trained with, and only such a model; a one-line ``ValueError`` otherwise."""
    wants = meta.get("data", {}).get("normative", "none") != "none"
    if wants and reference is None:
        raise ValueError(f"{where}: the model's data.normative is {meta['data']['normative']} (deviation maps) but no "
                         "normative reference is given (ingest the cohort with it, or load the model's normative.npz)")
    if not wants and reference is not None:
        raise ValueError(f"{where}: the cohort has a normative reference but the model's data.normative is none "
                         "(set it to pool, or ingest the cohort without it)")
    if reference is not None and meta.get("normative_sha256", reference.sha256) != reference.sha256:
        raise ValueError(f"{where}: the normative reference differs from the one the model was trained with "
                         f"(sha256 {reference.sha256[:12]} vs {meta['normative_sha256'][:12]})")


def model_input(pre: Preprocessed, reference: NormativeReference | None, where: str = "scan") -> np.ndarray:
    """What the encoder sees of a preprocessed scan: its deviation map under a normative
    reference (as ``Cohort.image`` for a cohort's scans), else its image."""
    return pre.image if reference is None else reference.apply(pre.image, pre.mask, source=where)


SCAN_TYPES = (str, Path, bytes, bytearray)


def _is_paths(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0 and \
        all(isinstance(v, SCAN_TYPES) for v in value)


def scan_inputs(model_input) -> list:
    """Normalise pyfunc input to a list of scans, each the bytes of a scan file (``bytes`` or
    base64 text), a path (NIfTI file, DICOM file or folder; read only as
    :mod:`medcl.serving.scan_input` allows) or a 3D array (RAS voxel order). Accepted: one
    scan, a list of them, a DataFrame whose first column (or ``path``/``scan`` column) holds
    them, a dict ``{"scan": [...]}``, a 3D array. Anything else is an :class:`InputRefused`."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        col = next((c for c in ("scan", "path") if c in model_input.columns), None)
        if col is None and len(model_input.columns) == 0:
            values = []
        else:
            values = model_input[col if col is not None else model_input.columns[0]].tolist()
    elif isinstance(model_input, dict):
        values = model_input.get("scan", model_input.get("path"))
        if values is None:
            raise InputRefused(f"input dict needs a 'scan' key, got {list(model_input)[:10]}")
        values = [values] if isinstance(values, SCAN_TYPES) else list(values)
    elif isinstance(model_input, SCAN_TYPES):
        values = [model_input]
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 3:
        values = [model_input]
    else:
        values = list(model_input)
    items: list = []
    for i, v in enumerate(values):
        if isinstance(v, SCAN_TYPES):
            items.append(v)
        elif _is_paths(v):  # {"scan": [a, b]} arrives from MLflow as one row holding the list
            items.extend(v)
        else:
            try:
                arr = np.asarray(v, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InputRefused(f"input {i}: expected scan bytes, a path or a 3D array, got "
                                   f"{type(v).__name__} ({str(exc).splitlines()[0][:100]})") from None
            if arr.ndim != 3:
                raise InputRefused(f"input {i}: expected scan bytes, a path or a 3D array, "
                                   f"got {type(v).__name__} of shape {arr.shape}")
            items.append(arr)
    if not items:
        raise InputRefused("no scans given: pass the bytes of NIfTI or DICOM files, 3D arrays or paths, e.g. "
                           "model.predict([open('scan.nii.gz', 'rb').read()]) or a DataFrame with one 'scan' column")
    return items


def embed_inputs(encoder: Encoder, items: list, meta: dict, spacing: float | None = None,
                 reference: NormativeReference | None = None) -> np.ndarray:
    """Representations of scans given as bytes of scan files, paths (NIfTI files, DICOM files
    or folders, read by :func:`medcl.data.ingest.preprocess_file`; see
    :mod:`medcl.serving.scan_input` for which) or 3D arrays in RAS voxel order with isotropic
    voxels of ``spacing`` mm (default: the model's ``data.spacing``). A scan that cannot be
    read is an :class:`InputRefused` naming it by its position. ``reference``: the model's
    normative reference, when it was trained on deviation maps (:func:`check_reference`)."""
    check_reference(meta, reference, "prediction")
    data_cfg = data_config(meta)
    spacing = float(spacing) if spacing else float(data_cfg.spacing)
    budget = RequestBudget()
    views = []
    for i, item in enumerate(items):
        with opened(item, i, budget) as scan:
            if isinstance(scan, Path):
                pre = preprocess_file(scan, data_cfg)
            else:
                pre = preprocess(np.asarray(scan, dtype=np.float32), np.diag([spacing] * 3 + [1.0]), data_cfg)
            views.append(eval_view(model_input(pre, reference, f"input {i}"), pre.mask, meta["view_size"]))
    return embed_views(encoder, views)
