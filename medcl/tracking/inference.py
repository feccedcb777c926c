"""What a registered model does at prediction time: scans in, representations out.

Shared by the encoder and the few-shot pyfunc models, and by ``medcl predict``: a scan is
preprocessed exactly as ingest did (:func:`medcl.data.ingest.preprocess`) and embedded from
its whole-foreground view, exactly as few-shot evaluation did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medcl.augment import eval_view
from medcl.config import DataConfig
from medcl.data.ingest import preprocess, preprocess_file
from medcl.fewshot.embed import embed_views
from medcl.models import Encoder


def load_encoder(weights: str | Path, meta: dict) -> Encoder:
    """An encoder from a state-dict file; ``weights_only`` so no pickled code ever runs."""
    enc = Encoder(meta["arch"], meta["conv1_t_stride"])
    enc.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return enc.eval()


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def scan_inputs(model_input) -> list:
    """Normalise pyfunc input: a path, a list of paths, a DataFrame with a ``path`` column,
    a dict ``{"path": [...]}``, or 3D arrays (already in RAS voxel order, ``spacing`` mm)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input.columns:
            raise ValueError(f"input DataFrame needs a 'path' column, got {list(model_input.columns)}")
        return model_input["path"].tolist()
    if isinstance(model_input, dict):
        return list(model_input.get("path", []))
    if isinstance(model_input, (str, Path)):
        return [model_input]
    if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
        return [model_input]
    return list(model_input)


def embed_inputs(encoder: Encoder, items: list, meta: dict) -> np.ndarray:
    """Representations of scans given as NIfTI paths or 3D arrays."""
    data_cfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["data"].items()})
    views = []
    for item in items:
        if isinstance(item, (str, Path)):
            pre = preprocess_file(Path(item), data_cfg)
        else:
            arr = np.asarray(item, dtype=np.float32)
            pre = preprocess(arr, np.diag([data_cfg.spacing] * 3 + [1.0]), data_cfg)
        views.append(eval_view(pre.image, pre.mask, meta["view_size"]))
    return embed_views(encoder, views)
