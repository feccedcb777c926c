"""Bit-identity check of a refactor of the training loop: every loss of a short demo pretraining,
as ``float.hex``, and the SHA-256 of the encoder it writes.

A behaviour-preserving change of medcl.train, medcl.ssl or medcl.augment must reproduce the
trace of the code before it exactly (not within a tolerance): the same views, the same order of
floating-point operations, the same random states. Run once on the old code, once on the new:

    python bench/loss_trace.py COHORT OUT/trace.json
    python bench/loss_trace.py COHORT OUT/trace.json --compare BEFORE/trace.json

``COHORT`` is a cohort cache (the 300-subject demo cohort); its ``train`` split is pretrained on
with ``configs/demo.yaml`` for ``train.epochs=6`` (54 steps), plus any ``--set key=value``.
``--compare`` exits 1 at the first loss or encoder that differs, and says which.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from medcl.config import load_config  # noqa: E402
from medcl.data.cohort import Cohort  # noqa: E402
from medcl.train import pretrain  # noqa: E402


def encoder_sha256(path: Path) -> str:
    """SHA-256 of the encoder's tensors' bytes, in state-dict order."""
    state = torch.load(path, weights_only=True)
    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()


def trace(cohort_dir: Path, out_dir: Path, overrides: list[str]) -> dict:
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=6", *overrides])
    cohort = Cohort.load(cohort_dir).select(split="train")
    start = time.perf_counter()
    result = pretrain(cfg, cohort, out_dir / "pretrain", progress=False)
    return {"steps": len(result.losses), "losses_hex": [float(x).hex() for x in result.losses],
            "encoder_sha256": encoder_sha256(result.encoder_path), "overrides": overrides,
            "seconds": time.perf_counter() - start}


def first_difference(ours: dict, ref: dict) -> str | None:
    """Where ``ours`` departs from ``ref`` (None when the losses and the encoder are identical)."""
    a, b = ours["losses_hex"], ref["losses_hex"]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"loss of step {i}: {x} ({float.fromhex(x)!r}) now, {y} ({float.fromhex(y)!r}) before"
    if len(a) != len(b):
        return f"{len(a)} steps now, {len(b)} before"
    if ours["encoder_sha256"] != ref["encoder_sha256"]:
        return f"encoder sha256 {ours['encoder_sha256']} now, {ref['encoder_sha256']} before"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort", type=Path, help="cohort cache (manifest.csv + arrays/)")
    ap.add_argument("out", type=Path, help="the trace to write (JSON)")
    ap.add_argument("--compare", type=Path, help="a trace to match exactly")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override (repeatable), e.g. augment.backend=monai")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medcl-loss-trace-") as tmp:
        ours = trace(args.cohort, Path(tmp), args.overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(ours, indent=1))
    print(f"{ours['steps']} steps in {ours['seconds']:.0f} s; encoder sha256 {ours['encoder_sha256']}")
    if args.compare is None:
        return 0
    diff = first_difference(ours, json.loads(args.compare.read_text()))
    if diff:
        print(f"DIFFERENT from {args.compare}: first difference: {diff}")
        return 1
    print(f"IDENTICAL to {args.compare}: all {ours['steps']} losses (float.hex) and the encoder sha256 match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
