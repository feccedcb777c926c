"""Crash and resume, on a real tiny cohort, with real processes and SIGKILL.

- ``medcl pretrain`` killed with SIGKILL at a random step, then ``medcl pretrain --resume``:
  the final weights (and the whole method state: heads, momentum encoder, queue, learned
  temperature) are bit-identical (``torch.equal``) to an uninterrupted run's, the losses are the
  same, and the resumed run continues the same MLflow run.
- Killed halfway through writing a checkpoint: the previous checkpoint is still loadable (the
  half-written bytes sit in ``last.pt.tmp``, which is refused), and resuming from it still ends
  bit-identical.

MoCo is the method: it has the most state to carry (momentum encoder and EMA schedule, queue,
learned temperature, AdamW moments, warmup + cosine schedule); the kill at a random step is also
run with SwAV and multi-crop (its queue, the step count that ends the freezing of its
prototypes, local views from the loop's own data path). The crash point comes from the
crash-test hook ``MEDCL_DEBUG_PAUSE`` (medcl.train.callbacks.debug_pause): the process
announces that it reached the step, then the test kills it with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
ARGS = ["train.method=moco", "augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32",
        "model.proj_dim=16", "train.queue_size=4", "train.learn_temperature=true", "train.epochs=3",
        "train.batch_size=2", "train.warmup_epochs=1", "train.num_workers=0", "train.threads=1",
        "train.checkpoint_every_steps=2"]
SWAV = ["train.method=swav", "augment.local_views=2", "augment.local_size=8", "train.swav_prototypes=5",
        "train.swav_queue_size=4", "train.swav_freeze_prototypes=4"]      # the later keys win over ARGS'
STEPS = 9          # 6 scans, 2 pairs per step: 3 steps per epoch, 3 epochs; checkpoints after 2, 3, 4, 6, 8, 9


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE")}
    env.update(MEDCL_SYSTEM_METRICS="false", PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(cohort: Path, out: Path, *flags: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "medcl.cli", "pretrain", "--cohort", str(cohort), "--out", str(out), "--quiet",
            "--no-register", *flags, *ARGS, *extra]


def _run_until_paused(cmd: list[str], pause: str, marker_dir: Path, timeout: float = 240) -> None:
    """Start ``cmd`` with the crash hook set to ``pause``, wait until it says it got there, SIGKILL it."""
    proc = subprocess.Popen(cmd, env=_env(MEDCL_DEBUG_PAUSE=pause), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = marker_dir / "paused"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before pausing at {pause}: {proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"process did not reach {pause} in {timeout} s")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _pretrain_here(cohort: Path, out: Path, resume: bool = False, extra: tuple[str, ...] = ()):
    """The loop in this process (no MLflow run), restoring the thread count it changes."""
    from medcl.config import load_config
    from medcl.data.cohort import Cohort
    from medcl.train import pretrain
    from medcl.pipelines.pretrain import pretrain_cohort

    threads = torch.get_num_threads()
    try:
        return pretrain(load_config(None, ARGS + list(extra)), pretrain_cohort(Cohort.load(cohort)), out,
                        progress=False, resume=resume)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_cohort, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    result = _pretrain_here(tiny_cohort, out)
    assert result.steps == STEPS
    return out, result


@pytest.fixture(scope="module")
def swav_reference(tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("swav_reference")
    result = _pretrain_here(tiny_cohort, out, extra=tuple(SWAV))
    assert result.steps == STEPS
    return out, result


def _assert_bit_identical(out: Path, reference, context: str) -> None:
    ref_out, ref = reference
    ours = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    theirs = torch.load(ref_out / "checkpoints" / "last.pt", weights_only=True)
    assert ours["losses"] == ref.losses, f"{context}: losses differ"
    assert ours["method"].keys() == theirs["method"].keys()
    for key, value in theirs["method"].items():
        assert torch.equal(ours["method"][key], value), f"{context}: {key} is not bit-identical"
    enc, ref_enc = (torch.load(p / "encoder.pt", weights_only=True) for p in (out, ref_out))
    assert enc.keys() == ref_enc.keys() and all(torch.equal(enc[k], ref_enc[k]) for k in enc), context


@pytest.mark.parametrize("method", ["moco", "swav"])
def test_kill_at_a_random_step_then_resume_is_bit_identical(tiny_cohort, request, tmp_path, method):
    import mlflow

    from medcl.train.state import load_checkpoint

    reference = request.getfixturevalue("reference" if method == "moco" else "swav_reference")
    extra = () if method == "moco" else tuple(SWAV)
    step = random.SystemRandom().randint(3, STEPS - 1)      # after the first checkpoint (step 2)
    context = f"{method} killed after step {step}"
    _run_until_paused(_cli(tiny_cohort, tmp_path, extra=extra), f"step:{step}", tmp_path / "pretrain")
    killed = load_checkpoint(tmp_path / "pretrain" / "checkpoints" / "last.pt")
    assert killed["position"]["step"] < step, context       # the kill came before this step's checkpoint
    run_id = killed["mlflow_run_id"]
    assert run_id, context

    done = subprocess.run(_cli(tiny_cohort, tmp_path, "--resume", extra=extra), env=_env(), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"{context}: {done.stderr[-3000:]}"
    _assert_bit_identical(tmp_path / "pretrain", reference, context)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id], f"{context}: --resume did not continue the same MLflow run"
    assert runs[0].info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "loss")} == set(range(STEPS)), context


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tiny_cohort, reference, tmp_path):
    from medcl.train.checkpoint import CheckpointError
    from medcl.train.state import load_checkpoint

    code = ("import sys; from pathlib import Path; from medcl.config import load_config; "
            "from medcl.data.cohort import Cohort; from medcl.train import pretrain; "
            "from medcl.pipelines.pretrain import pretrain_cohort; "
            "pretrain(load_config(None, sys.argv[3:]), pretrain_cohort(Cohort.load(sys.argv[1])), Path(sys.argv[2]), "
            "progress=False)")
    # the 3rd checkpoint of the run is the one after step 4; the 2nd (after step 3) must survive
    _run_until_paused([sys.executable, "-c", code, str(tiny_cohort), str(tmp_path), *ARGS], "checkpoint:3",
                      tmp_path / "checkpoints")
    half = tmp_path / "checkpoints" / "last.pt.tmp"
    assert half.exists() and half.stat().st_size > 0
    with pytest.raises(CheckpointError, match="last.pt.tmp: not a readable checkpoint"):
        load_checkpoint(half)
    previous = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert previous["position"] == {"epoch": 1, "step_in_epoch": 0, "step": 3, "steps_per_epoch": 3, "world_size": 1}

    _pretrain_here(tiny_cohort, tmp_path, resume=True)
    _assert_bit_identical(tmp_path, reference, "resumed after a kill during a checkpoint write")
    assert not half.exists(), "the next checkpoint write replaces the stray temporary file"
