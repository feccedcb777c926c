"""Seed variance of the demo (``demo.seeds``) and the measured pace of pretraining.

The demo with ``demo.seeds=2`` pretrains twice (``train.seed``, ``train.seed + 1``) and scores
each pretrained encoder and its own random-init encoder on the same episodes; ``summary.json``'s
``seeds`` block holds the per-seed numbers and their mean and sd. After 20 steps the training
loop prints its measured seconds per step and its expected finish (once), and the demo its own."""

import contextlib
import io
import json
import os
import re
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest

from medcl import tracking
from medcl.config import ConfigError, load_config
from medcl.data.cohort import Cohort
from medcl.train import pretrain
from medcl.train.callbacks import TIMED_STEPS, ProgressLog, StepTiming, format_duration

PACE = re.compile(r"^(?P<desc>.+): (?P<s>\d+\.\d\d) s/step over steps 3-20 \(after a 2-step warm-up\); "
                  r"(?P<left>\d+) steps to go, expected to finish at (?P<at>\d\d:\d\d:\d\d) \(in (?P<in>[^)]+)\)$")


def test_demo_seeds_is_checked():
    assert load_config(None, ["demo.seeds=3"]).demo.seeds == 3
    assert load_config(None, []).demo.seeds == 1
    with pytest.raises(ConfigError, match=r"^config key 'demo.seeds' must be >= 1, got 0$"):
        load_config(None, ["demo.seeds=0"])


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 12, 60, 1073, 3725)] == ["0 s", "12 s", "1 min 0 s", "17 min 53 s",
                                                                     "1 h 02 min"]


def test_pace_line_comes_once_after_step_20_and_not_before(capsys):
    """The callback alone, step by step: nothing printed through step 19, one line at step 20,
    nothing more after; ``on_timing`` gets the same numbers."""
    seen: list[StepTiming] = []
    log = ProgressLog(100, "pretrain simclr", True, seen.append)
    state = SimpleNamespace(step=0, epoch=0)
    log.on_train_start(state)
    printed = []
    for step in range(1, 31):
        state.step = step
        log.on_step_end(state, {"loss": 1.0})
        printed.append(capsys.readouterr().out)
    log.on_train_end(state)
    assert all(p == "" for i, p in enumerate(printed) if i != TIMED_STEPS - 1)
    m = PACE.match(printed[TIMED_STEPS - 1].strip())
    assert m and m["desc"] == "pretrain simclr" and int(m["left"]) == 80
    assert len(seen) == 1 and seen[0].last == 20 and seen[0].first == 3 and seen[0].steps_left == 80
    assert f"{seen[0].finish:%H:%M:%S}" == m["at"]


def test_pretraining_prints_its_pace_once(tiny_cohort, tmp_path, capsys):
    """A real run of 24 steps (6 scans, 2 pairs a step, 8 epochs): the line appears once, with a
    parseable finish time a few seconds ahead; without progress it is not printed."""
    cfg = load_config(None, ["augment.view_size=16", "model.widen_factor=0.125", "train.epochs=8",
                             "train.batch_size=2", "train.num_workers=0", "train.checkpoint_every_epoch=false"])
    seen: list[StepTiming] = []
    result = pretrain(cfg, Cohort.load(tiny_cohort), tmp_path / "a", progress=True, on_timing=seen.append)
    out = capsys.readouterr().out
    assert result.steps == 24
    lines = [line for line in out.splitlines() if "s/step" in line]
    assert len(lines) == 1, out
    m = PACE.match(lines[0].strip())
    assert m and int(m["left"]) == 4 and m["desc"] == "pretrain simclr", lines[0]
    at = datetime.strptime(m["at"], "%H:%M:%S").time()
    assert at == seen[0].finish.replace(microsecond=0).time() and seen[0].s_per_step > 0
    pretrain(cfg, Cohort.load(tiny_cohort), tmp_path / "b", progress=False, on_timing=seen.append)
    assert "s/step" not in capsys.readouterr().out and len(seen) == 2
