"""Checkpoint files: written atomically, read without unpickling code. What a checkpoint holds
is :class:`medcl.train.state.TrainState`'s business (its ``state_dict``); this module only moves
such a dict to and from disk, and says whether a config may resume it.

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
from pathlib import Path
from typing import Callable

import torch

from medcl.config import flatten


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_atomic(obj, path: Path, midway: Callable[[Path], None] | None = None) -> None:
    """``torch.save`` to a temporary file, flush, fsync, rename over ``path``, fsync the folder:
    a crash never leaves half a file at ``path``. ``midway(path)``, when given, runs with half of
    the bytes written and flushed (the crash tests stop a process there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        if midway is not None:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            os.fsync(fh.fileno())
            midway(path)
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


def read_weights_only(path: Path) -> object:
    """What :func:`save_atomic` wrote at ``path``; refuses pickled objects and half-written or
    unreadable files, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise CheckpointError(f"{path}: refused: the file holds pickled Python objects, not only tensors and "
                              f"plain containers (loaded with weights_only=True; {detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None


# the config sections that decide the training trajectory, and the keys in them that may
# differ between the run that wrote a checkpoint and the one resuming it
TRAINING_SECTIONS = ("augment", "model", "train")
RESUMABLE_CHANGES = ("train.num_workers", "train.worker_kind", "train.threads", "train.checkpoint_every_steps",
                     "train.checkpoint_every_epoch", "train.knn_every_epochs", "train.device",
                     "train.compile", "train.log_every_steps")


def config_mismatch(saved: dict, current: dict) -> str | None:
    """The first key of :data:`TRAINING_SECTIONS` whose value differs, ignoring
    :data:`RESUMABLE_CHANGES`; None when they agree."""
    a = flatten({k: saved.get(k, {}) for k in TRAINING_SECTIONS})
    b = flatten({k: current.get(k, {}) for k in TRAINING_SECTIONS})
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_CHANGES:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return f"{key} ({a.get(key, '<absent>')!r} in the checkpoint, {b.get(key, '<absent>')!r} now)"
    return None
