"""Checkpoints: everything a run needs to continue bit for bit, written atomically, read
without unpickling code.

A checkpoint (``OUT/pretrain/checkpoints/last.pt``) is a ``torch.save`` of plain containers and
tensors only:

| key | what |
|---|---|
| ``format`` | ``medcl-checkpoint/1`` |
| ``method`` | the method's state dict: encoder, heads, momentum encoder, MoCo's queue, learned temperature |
| ``optimizer``, ``scheduler``, ``scaler`` | their state dicts (the gradient scaler's is empty unless fp16) |
| ``rng`` | torch CPU (and CUDA) generators, numpy's global and Python's ``random`` states |
| ``position`` | ``epoch``, ``step_in_epoch`` (batches of that epoch already done), ``step``, ``steps_per_epoch``, ``world_size`` |
| ``mlflow_run_id`` | the MLflow run to continue on ``--resume`` ("" when none) |
| ``config`` | the run's config (``config_to_dict``) |
| ``losses`` | the loss of every step so far |

Written by rank 0 only: to a temporary file in the same folder, flushed and fsynced, renamed
over the previous checkpoint, then the folder fsynced; a crash at any point leaves either the
old or the new checkpoint, never half of one. Read with ``torch.load(weights_only=True)``: a
file carrying a pickled object (code that would run on load) is refused with
:class:`CheckpointError`.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import time
from pathlib import Path

import numpy as np
import torch

FORMAT = "medcl-checkpoint/1"
REQUIRED = ("format", "method", "optimizer", "scheduler", "scaler", "rng", "position", "mlflow_run_id", "config",
            "losses")
PAUSE_ENV = "MEDCL_DEBUG_PAUSE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def rng_state() -> dict:
    """Every random generator a run touches, as tensors and plain numbers."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def debug_pause(kind: str, count: int, marker_dir: Path) -> None:
    """Crash-test hook: with ``MEDCL_DEBUG_PAUSE=kind:count`` (``step:N`` after the N-th
    optimiser step, before its checkpoint; ``checkpoint:N`` halfway through writing the N-th
    checkpoint of this process) write ``marker_dir/paused`` and sleep until killed. Never set
    it outside tests."""
    want = os.environ.get(PAUSE_ENV, "")
    if want != f"{kind}:{count}":
        return
    (Path(marker_dir) / "paused").write_text(want)
    while True:
        time.sleep(1)


def save_atomic(obj, path: Path, pause_count: int | None = None) -> None:
    """``torch.save`` to a temporary file, flush, fsync, rename over ``path``, fsync the folder:
    a crash never leaves half a file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        if pause_count is not None:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            os.fsync(fh.fileno())
            debug_pause("checkpoint", pause_count, path.parent)
            fh.write(data[half:])
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform where folders cannot be opened: the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_atomic`; refuses pickled objects, half-written files,
    and files that are not medcl checkpoints, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise CheckpointError(f"{path}: refused: the file holds pickled Python objects, not only tensors and "
                              f"plain containers (loaded with weights_only=True; {detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medcl checkpoint (expected format '{FORMAT}')")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def read_run_id(path: Path) -> str:
    """The MLflow run id stored in the checkpoint at ``path`` ("" when it has none)."""
    return str(load_checkpoint(path)["mlflow_run_id"])


# the config sections that decide the training trajectory, and the keys in them that may
# differ between the run that wrote a checkpoint and the one resuming it
TRAINING_SECTIONS = ("augment", "model", "train")
RESUMABLE_CHANGES = ("train.num_workers", "train.worker_kind", "train.threads", "train.checkpoint_every_steps",
                     "train.checkpoint_every_epoch", "train.knn_every_epochs", "train.device")


def config_mismatch(saved: dict, current: dict) -> str | None:
    """The first key of :data:`TRAINING_SECTIONS` whose value differs, ignoring
    :data:`RESUMABLE_CHANGES`; None when they agree."""
    from medcl.config import flatten

    a = flatten({k: saved.get(k, {}) for k in TRAINING_SECTIONS})
    b = flatten({k: current.get(k, {}) for k in TRAINING_SECTIONS})
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_CHANGES:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return f"{key} ({a.get(key, '<absent>')!r} in the checkpoint, {b.get(key, '<absent>')!r} now)"
    return None
