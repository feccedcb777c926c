"""The training step waits on the host no more than the documented budget (docs/performance.md,
"Host synchronisations per step"): a real pretraining run on CPU with every call that copies a
tensor's value to the host counted (``.item()``, ``float()``, ``int()``, ``bool()``,
``.tolist()``, ``.cpu()``, ``.numpy()``). On a GPU each of them makes the CPU wait for the
device; on a CPU they are cheap, but the same calls run, so they can be counted here.

Counted: the calls made by medcl's own code on the hot path (the steps of an epoch, their
fetches of the step scalars and the per-step callbacks), in the training thread. Not counted:
the data path, which makes the views (medcl.augment, the pair sources), and torch's own code.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

import medcl
import medcl.train.loop as loop
from medcl.config import load_config
from medcl.data.cohort import Cohort
from medcl.train import pretrain
from medcl.train.step import StepMetrics

MEDCL = Path(medcl.__file__).resolve().parent
DATA_PATH = ("augment/", "data/", "train/batched_pairs.py", "train/monai_pairs.py", "train/pairs.py",
             "train/store.py")
HOST_COPIES = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
# the budget (docs/performance.md): per step, and per fetch of the step scalars; supcon's
# argument check ("no sample has a positive") reads one boolean per step
PER_STEP, PER_FETCH = {"supcon": 1}, 1


class HostCopies:
    """Counts the host copies made by medcl code (data path excepted) in this thread while on."""

    def __init__(self, monkeypatch):
        self.on, self.calls, self.thread = False, Counter(), threading.get_ident()
        for name in HOST_COPIES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.on and threading.get_ident() == self.thread:
                frame = sys._getframe(1)
                path = Path(frame.f_code.co_filename).resolve()
                if path.is_relative_to(MEDCL):
                    rel = path.relative_to(MEDCL).as_posix()
                    if not rel.startswith(DATA_PATH):
                        self.calls[f"{rel}:{frame.f_lineno} .{name}"] += 1
            return original(tensor, *args, **kwargs)
        return counted


def _run(tiny_cohort, tmp_path, monkeypatch, args: list[str]):
    copies = HostCopies(monkeypatch)
    counts = Counter()
    real_epoch, real_step, real_fetch = loop._epoch, loop.train_step, StepMetrics.fetch

    def epoch(*a, **kw):
        copies.on = True
        try:
            return real_epoch(*a, **kw)
        finally:
            copies.on = False

    def step(*a, **kw):
        counts["steps"] += 1
        return real_step(*a, **kw)

    def fetch(self):
        counts["fetches"] += 1
        return real_fetch(self)

    monkeypatch.setattr(loop, "_epoch", epoch)
    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(StepMetrics, "fetch", fetch)
    cfg = load_config(None, ["augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32",
                             "model.proj_dim=16", "train.epochs=4", "train.batch_size=2", "train.num_workers=0",
                             "train.checkpoint_every_epoch=false", *args])
    result = pretrain(cfg, Cohort.load(tiny_cohort), tmp_path / "out", progress=False)
    return result, counts, copies.calls


@pytest.mark.parametrize("args", [
    ["train.method=simclr", "train.log_every_steps=4", "train.learn_temperature=true"],
    ["train.method=npair", "train.log_every_steps=5"],
    ["train.method=moco", "train.log_every_steps=1", "train.queue_size=4"],
    ["train.method=supcon", "train.log_every_steps=4"],
])
def test_host_copies_on_the_hot_path_stay_within_the_budget(tiny_cohort, tmp_path, monkeypatch, args):
    result, counts, calls = _run(tiny_cohort, tmp_path, monkeypatch, args)
    steps, fetches = counts["steps"], counts["fetches"]
    every = int(args[1].split("=")[1])
    assert steps == result.steps == 12 and len(result.losses) == 12
    # fetched every N steps and at each epoch's end (3 steps an epoch), not at every step
    assert fetches == len({s for s in range(1, 13) if s % every == 0 or s % 3 == 0})
    total = sum(calls.values())
    per_step = PER_STEP.get(args[0].split("=")[1], 0)
    assert total <= per_step * steps + PER_FETCH * fetches, f"{total} host copies in {steps} steps: {dict(calls)}"
    # the counter is not blind: it sees the one copy of each fetch (medcl.dist.mean_over_ranks)
    assert sum(n for k, n in calls.items() if k.startswith("dist.py:") and k.endswith(".tolist")) == fetches
