"""What the loop does around its steps, as small callbacks called at five hooks:

- ``on_train_start(state)``: after the state is built (and restored, on resume), before the
  first step;
- ``on_log(state, step, logs)``: for each step whose scalars the loop has just fetched from the
  device (``logs``, averaged over the ranks), in step order; the loop fetches every
  ``train.log_every_steps`` steps, at the end of each epoch and before a checkpoint;
- ``on_step_end(state)``: after each optimiser step, once ``state`` has advanced
  (``state.step - 1`` is the step just done) and after its ``on_log`` calls, if any;
- ``on_epoch_end(state)``: after the last step of an epoch;
- ``on_train_end(state)``: after the last epoch, or when training stops on an error.

They run in the order given to :class:`Callbacks`; the loop gives the ones that log or write
files to rank 0 only. None of them touches a random generator or a weight, so a run's numbers
do not depend on which of them run.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from medcl.tracking import BackgroundLog, background_log, log_metrics
from medcl.train.health import KnnProbe
from medcl.train.state import TrainState

PAUSE_ENV = "MEDCL_DEBUG_PAUSE"


class Callback:
    """A hook does nothing unless a callback overrides it."""

    def on_train_start(self, state: TrainState) -> None:
        """Before the first step of this process (after a resume: the first new step)."""

    def on_log(self, state: TrainState, step: int, logs: dict[str, float]) -> None:
        """The scalars of step ``step`` (0-based), fetched from the device, averaged over the processes."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimiser step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After the last step of each epoch."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last step, before the encoder is written."""


class Callbacks(Callback):
    """Several callbacks, called in order at every hook."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def on_train_start(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_train_start(state)

    def on_log(self, state: TrainState, step: int, logs: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_log(state, step, logs)

    def on_step_end(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_step_end(state)

    def on_epoch_end(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_epoch_end(state)

    def on_train_end(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_train_end(state)


WARMUP_STEPS = 2      # steps left out of the measured pace (first-batch set-up, allocator, caches)
TIMED_STEPS = 20      # the pace is reported after this many steps of a run (or of its resumed part)


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``17 min 53 s`` or ``12 s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


@dataclass(frozen=True)
class StepTiming:
    """A run's measured pace: wall seconds per step over steps ``first``..``last`` (1-based, of
    the whole run), and the expected finish of its ``steps_left`` steps at that pace."""
    s_per_step: float
    first: int
    last: int
    steps_left: int
    total_steps: int
    finish: datetime

    def line(self, desc: str) -> str:
        return (f"{desc}: {self.s_per_step:.2f} s/step over steps {self.first}-{self.last} (after a "
                f"{WARMUP_STEPS}-step warm-up); {self.steps_left} steps to go, expected to finish at "
                f"{self.finish:%H:%M:%S} (in {format_duration(self.steps_left * self.s_per_step)})")


class ProgressLog(Callback):
    """Every fetched step's scalars to the active MLflow run (at the step's index), sent by a
    background writer (:func:`medcl.tracking.background_log`: the step never waits for MLflow),
    and a progress bar; after the TIMED_STEPS-th step of this process, the measured pace
    (warm-up steps left out): one printed line (with the bar), ``pretrain/s_per_step`` in
    MLflow, and ``on_timing`` called with the :class:`StepTiming`."""

    def __init__(self, total_steps: int, desc: str, show_bar: bool,
                 on_timing: Callable[[StepTiming], None] | None = None):
        self.total, self.desc, self.show_bar, self.on_timing = total_steps, desc, show_bar, on_timing
        self.bar: tqdm | None = None
        self.writer: BackgroundLog | None = None
        self.done, self.warm_end = 0, 0.0

    def on_train_start(self, state: TrainState) -> None:
        self.bar = tqdm(total=self.total, initial=state.step, desc=self.desc, unit="step", disable=not self.show_bar)
        self.writer = background_log()
        self.done = 0

    def on_log(self, state: TrainState, step: int, logs: dict[str, float]) -> None:
        self.writer.log_metrics(logs, step)
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", epoch=state.epoch)

    def on_step_end(self, state: TrainState) -> None:
        self.bar.update(1)
        self.done += 1
        if self.done == WARMUP_STEPS:
            self.warm_end = time.perf_counter()
        elif self.done == TIMED_STEPS:
            self._pace(state)

    def _pace(self, state: TrainState) -> None:
        pace = (time.perf_counter() - self.warm_end) / (TIMED_STEPS - WARMUP_STEPS)
        left = self.total - state.step
        timing = StepTiming(pace, state.step - TIMED_STEPS + WARMUP_STEPS + 1, state.step, left, self.total,
                            datetime.now() + timedelta(seconds=left * pace))
        self.writer.log_metrics({"pretrain/s_per_step": pace}, state.step - 1)
        if self.show_bar:
            tqdm.write(timing.line(self.desc))
        if self.on_timing is not None:
            self.on_timing(timing)

    def on_train_end(self, state: TrainState) -> None:
        """Everything queued sent (or spooled) before the run can end."""
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


class CollapseWarning(Callback):
    """One warning per epoch at most when the step's ``health/collapsed`` says the embeddings
    are collapsing (:mod:`medcl.train.health`)."""

    def __init__(self, method_name: str, threshold: float):
        self.method_name, self.threshold = method_name, threshold
        self.warned_epoch = -1

    def on_log(self, state: TrainState, step: int, logs: dict[str, float]) -> None:
        if logs.get("health/collapsed") and self.warned_epoch != state.epoch:
            self.warned_epoch = state.epoch
            warnings.warn(f"train.method={self.method_name}: representation collapse suspected at step "
                          f"{step}: std x sqrt(dim) of the normalised embeddings is "
                          f"{logs['health/std_ratio']:.3f}, below train.collapse_threshold={self.threshold}",
                          stacklevel=2)


class KnnEvaluation(Callback):
    """The online kNN probe every ``every`` epochs, logged at the epoch's last step."""

    def __init__(self, probe: KnnProbe, every: int, device: torch.device):
        self.probe, self.every, self.device = probe, every, device

    def on_epoch_end(self, state: TrainState) -> None:
        if (state.epoch + 1) % self.every == 0:
            acc = self.probe(state.method.encoder, self.device)
            if acc is not None:
                log_metrics({"health/knn_balanced_accuracy": acc}, state.step - 1)


class Checkpointer(Callback):
    """The checkpoint at ``path``: every ``every_steps`` steps inside an epoch (0: never), at the
    end of every epoch when ``every_epoch``, and always after the last epoch (``last_epoch``).
    ``midway`` is passed on to :func:`medcl.train.checkpoint.save_atomic`."""

    def __init__(self, path: Path, every_steps: int, every_epoch: bool, last_epoch: int, midway=None):
        self.path, self.every_steps, self.every_epoch, self.last_epoch = path, every_steps, every_epoch, last_epoch
        self.midway = midway

    def on_step_end(self, state: TrainState) -> None:
        if self.every_steps and state.step % self.every_steps == 0 and state.step_in_epoch < state.steps_per_epoch:
            state.save(self.path, self.midway)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.every_epoch or state.epoch == self.last_epoch:
            state.save(self.path, self.midway)


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


class DebugPause(Callback):
    """The crash tests' hook (:func:`debug_pause`), when ``MEDCL_DEBUG_PAUSE`` is set: after
    each step (``step:N``), and halfway through each checkpoint write (``checkpoint:N``, through
    :attr:`midway`, which the :class:`Checkpointer` is given). Place it before the Checkpointer:
    a step's pause comes before that step's checkpoint."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.saves = 0
        self.midway = self._checkpoint_midway if os.environ.get(PAUSE_ENV) else None

    def _checkpoint_midway(self, path: Path) -> None:
        self.saves += 1
        debug_pause("checkpoint", self.saves, path.parent)

    def on_step_end(self, state: TrainState) -> None:
        debug_pause("step", state.step, self.out_dir)
