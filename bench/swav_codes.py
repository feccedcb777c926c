"""Why SwAV does or does not learn: a short SwAV pretraining on a cohort's ``train`` split
(``configs/demo.yaml`` plus overrides), printing after each step the loss and what the codes,
the predictions and the embeddings of the step's batch (its first global view) look like.

    python bench/swav_codes.py COHORT STEPS [section.key=value ...]

One JSON line per step (docs/methods.md, "SwAV and multi-crop on today's demo cohort"):

- ``loss``; ``H_code`` / ``H_pred``: mean entropy of the Sinkhorn-Knopp codes (without the
  queue) and of the predictions ``softmax(scores / temperature)``, ln K when uniform;
- ``used_code`` / ``used_pred``: how many prototypes are some sample's argmax;
- ``z_cos``: mean cosine between the batch's normalised embeddings (1 = all the same);
- ``in_span``: mean norm of the embeddings' part in the prototypes' span (0: orthogonal to
  every prototype, so every score is 0 and the prediction uniform);
- ``proto_grad``: the prototypes' gradient norm (0 while frozen).

With ``train.method=`` another method (a control), only ``loss`` and ``z_cos``.

The statistics are taken in the step's forward pass, before its optimiser step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medcl import dist  # noqa: E402
from medcl.data.cohort import Cohort  # noqa: E402
from medcl.losses import sinkhorn  # noqa: E402
from medcl.train.data import make_pair_source  # noqa: E402
from medcl.train.loop import Plan, build_trainer  # noqa: E402
from medcl.train.pairs import epoch_batches  # noqa: E402
from medcl.train.step import train_step  # noqa: E402
from medcl.validate import load_checked  # noqa: E402


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())


def batch_cosine(z: torch.Tensor) -> float:
    """Mean cosine between the distinct rows of ``z`` (N, D)."""
    zn = F.normalize(z.detach().double(), dim=1)
    sim = zn @ zn.t()
    return float((sim.sum() - sim.diag().sum()) / (len(zn) * (len(zn) - 1)))


def code_stats(z: torch.Tensor, prototypes: torch.Tensor, temperature: float, epsilon: float,
               iterations: int) -> dict[str, float]:
    """The statistics of the module docstring for embeddings ``z`` (N, D) and unit-norm
    ``prototypes`` (K, D)."""
    zn = F.normalize(z.detach().double(), dim=1)
    w = prototypes.detach().double()
    scores = zn @ w.t()
    q = sinkhorn(scores, epsilon, iterations)
    p = F.softmax(scores / temperature, dim=1)
    in_span = zn @ torch.linalg.pinv(w) @ w
    return {"H_code": _entropy(q), "H_pred": _entropy(p), "used_code": int(q.argmax(1).unique().numel()),
            "used_pred": int(p.argmax(1).unique().numel()),
            "z_cos": batch_cosine(zn),
            "in_span": float(in_span.norm(dim=1).mean()), "ln_K": math.log(len(w))}


def main(argv: list[str]) -> list[dict]:
    cohort_dir, steps, overrides = Path(argv[0]), int(argv[1]), argv[2:]
    cfg = load_checked(ROOT / "configs" / "demo.yaml", ["train.method=swav", *overrides])
    t = cfg.train
    cohort = Cohort.load(cohort_dir).select(split="train")
    info = dist.setup(t.device, t.ddp_backend)
    plan = Plan.of(t, len(cohort), 1)
    trainer = build_trainer(cfg, plan, info)
    method = trainer.state.method
    seen: dict[str, torch.Tensor] = {}
    method.projector.register_forward_hook(lambda mod, inp, out: seen.__setitem__("z", out))
    source = make_pair_source(cohort, cfg, info.device)
    rows, start = [], time.perf_counter()
    try:
        for epoch in range(math.ceil(steps / plan.steps_per_epoch)):
            for batch in source.batches(epoch_batches(len(cohort), plan.global_batch, t.seed, epoch), epoch):
                if len(rows) == steps:
                    break
                protos = getattr(method, "prototypes", None)
                w = protos.weight.detach().clone() if protos is not None else None
                logs = train_step(trainer.model, trainer.state, batch, trainer.precision, plan.total_steps,
                                  t.collapse_threshold, info.device, health=False)
                trainer.state.advance()
                z = seen["z"][:len(batch[0])]
                row = {"step": len(rows), "loss": float(logs["loss"]), "z_cos": batch_cosine(z)}
                if protos is not None:
                    grad = protos.weight.grad
                    row.update(code_stats(z, w, t.temperature, t.swav_epsilon, t.swav_iterations),
                               proto_grad=float(grad.norm()) if grad is not None else 0.0)
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    finally:
        source.close()
    print(f"{len(rows)} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
