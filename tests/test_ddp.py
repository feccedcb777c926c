"""DDP equivalence: 2 processes x B/2 pairs give the loss and the gradients of 1 process x B pairs.

Real torchrun (``python -m torch.distributed.run --standalone --nproc_per_node 2``), gloo
backend, CPU. This file is both the test and, run by torchrun with ``--worker``, the worker.

Encoder and heads: the real ones (MONAI resnet10 at widen_factor 0.125 on 16^3 views, the
projection and prediction heads), all with batch norm, run with ``train.sync_bn=true``: every
batch norm becomes :class:`medcl.dist.SyncBatchNorm`, whose statistics are those of
both processes' samples, so each layer sees the same global batch as the one-process reference
(which uses plain ``nn.BatchNorm``). Without sync_bn the two runs would differ by design.

For every method (and SwAV, SimCLR and BYOL with two local views of multi-crop; SwAV's queue
full at the second step, its prototypes frozen for the first), two SGD steps in float64: the loss (mean over ranks of each rank's loss) and
every parameter's gradient after DDP's averaging must equal the one-process values within 1e-5
at both steps (float64 so that the bound measures the algorithm, not float32 summation order:
in float32 the largest gradients, of the first convolution, agree only to ~3e-5 absolute), so MoCo's queue (filled from every rank's keys) and the momentum encoders after an
EMA update are compared too. Then the same two processes run ``run_pretrain`` (the CLI's
pipeline) on a tiny cohort: one MLflow run and one checkpoint, written by rank 0, and final
weights, heads, momentum encoder and queue equal to a one-process run's. That run is in float64
(``train.precision=fp64``) too: this toy network (batch norm over 2-4 samples) is chaotic in
float32, where 1e-5 gradient noise grows to 1e-2 weight differences within six steps in one
process as much as in two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

METHODS = ["simclr", "moco", "byol", "barlow_twins", "vicreg", "supcon", "triplet", "margin", "npair",
           "swav/local", "simclr/local", "byol/local"]     # /local: with two local views (multi-crop)
B = 4                      # global pairs per step: 2 per rank
TINY = ["augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32", "model.proj_dim=16",
        "train.queue_size=12", "train.learn_temperature=true", "train.optimizer=sgd", "train.lr=0.05",
        "train.weight_decay=0.0", "train.sync_bn=true", "train.margin=0.5", "augment.local_size=8",
        "train.swav_prototypes=6", "train.swav_queue_size=4", "train.swav_freeze_prototypes=1"]
PRETRAIN = TINY + ["train.method=moco", "train.epochs=2", "train.batch_size=2", "train.num_workers=0",
                   "train.threads=1", "train.warmup_epochs=0", "train.precision=fp64"]


def _config(name: str):
    from medcl.config import load_config

    return load_config(None, TINY + [f"train.method={name.split('/')[0]}"])


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    v1, v2 = torch.randn(B, 1, 16, 16, 16, generator=g), torch.randn(B, 1, 16, 16, 16, generator=g)
    labels = torch.tensor([0, 1, -1, 0])       # a class on both ranks, and an unlabelled scan
    return v1, v2, labels, torch.randn(B, 2, 1, 8, 8, 8, generator=g)


def run_method(name: str, rank: int = 0, world: int = 1) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Two optimiser steps of ``name`` on this rank's shard, in float64; (loss, gradients) per step."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run_method(name, rank, world)
    finally:
        torch.set_default_dtype(dtype)


def _run_method(name: str, rank: int, world: int) -> list[tuple[float, dict[str, torch.Tensor]]]:
    from medcl.ssl import build_method
    from medcl import dist
    from medcl.train.optim import build_optimizer

    cfg = _config(name)
    torch.manual_seed(0)
    method = build_method(cfg)
    model = method
    if world > 1:
        method = dist.convert_sync_batchnorm(method, torch.device("cpu"))
        model = torch.nn.parallel.DistributedDataParallel(method)
    opt = build_optimizer(method, cfg.train, cfg.train.lr)
    per = B // world
    out = []
    for step in range(2):
        v1, v2, y, local = (x[rank * per:(rank + 1) * per] for x in _batch(step))
        res = model(v1, v2, y, local) if name.endswith("/local") else model(v1, v2, y)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        loss = dist.all_reduce_mean({"loss": float(res.loss.detach())})["loss"]
        out.append((loss, {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}))
        opt.step()
        method.on_step_end(step, 10)
    return out


def worker(out_dir: Path, cohort_dir: Path) -> None:
    from medcl import tracking
    from medcl.config import load_config
    from medcl import dist
    from medcl.pipelines.pretrain import run_pretrain

    info = dist.setup("cpu", "gloo")
    results = {name: run_method(name, info.rank, info.world) for name in METHODS}
    if info.main:
        torch.save(results, out_dir / "ddp_results.pt")
    out = run_pretrain(load_config(None, PRETRAIN), cohort_dir, out_dir / "run", tracking.resolve_uri(None, out_dir / "run"),
                       progress=False, register=False)
    if info.main:
        (out_dir / "run_id.txt").write_text(str(out.run_id))
    dist.teardown(info)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_cohort):
    tmp = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", MEDCL_SYSTEM_METRICS="false", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--worker", str(tmp), str(tiny_cohort)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp


@pytest.mark.parametrize("name", METHODS)
def test_two_processes_equal_one(ddp_run, name):
    two = torch.load(ddp_run / "ddp_results.pt", weights_only=True)[name]
    one = run_method(name)
    for step, ((loss2, grads2), (loss1, grads1)) in enumerate(zip(two, one)):
        assert loss2 == pytest.approx(loss1, abs=1e-5), f"{name} step {step}: loss {loss2} vs {loss1}"
        assert grads2.keys() == grads1.keys()
        for key in grads1:
            err = (grads2[key] - grads1[key]).abs().max().item()
            assert err <= 1e-5, f"{name} step {step}: gradient of {key} differs by {err:.2e}"


def test_pretrain_under_torchrun_logs_once_and_matches_one_process(ddp_run, tiny_cohort):
    """The pipeline under torchrun: rank 0 alone logs (one MLflow run, one loss per step) and
    writes the checkpoint; losses and final state equal a one-process run's (MoCo, sync_bn)."""
    import mlflow

    from medcl.config import load_config
    from medcl.data.cohort import Cohort
    from medcl.train import pretrain
    from medcl.pipelines.pretrain import pretrain_cohort

    client = mlflow.MlflowClient(f"sqlite:///{ddp_run / 'run' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [(ddp_run / "run_id.txt").read_text()]
    history = sorted(client.get_metric_history(runs[0].info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(6))       # 3 steps per epoch, 2 epochs, logged once
    assert sorted(p.name for p in (ddp_run / "run" / "pretrain" / "checkpoints").iterdir()) == ["last.pt"]

    threads = torch.get_num_threads()
    try:
        ref = pretrain(load_config(None, PRETRAIN), pretrain_cohort(Cohort.load(tiny_cohort)),
                       ddp_run / "ref", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [m.value for m in history] == pytest.approx(ref.losses, abs=1e-5)
    two = torch.load(ddp_run / "run" / "pretrain" / "checkpoints" / "last.pt", weights_only=True)["method"]
    one = torch.load(ref.checkpoint_path, weights_only=True)["method"]
    assert two.keys() == one.keys() and any(k.startswith("momentum_encoder.") for k in one) and "queue" in one
    for key in one:
        if one[key].is_floating_point():
            err = (two[key] - one[key]).abs().max().item()
            assert err <= 1e-5, f"{key} differs by {err:.2e}"
        else:
            assert torch.equal(two[key], one[key]), key


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    i = sys.argv.index("--worker")
    worker(Path(sys.argv[i + 1]), Path(sys.argv[i + 2]))
    print(json.dumps({"rank": os.environ.get("RANK"), "ok": True}))
