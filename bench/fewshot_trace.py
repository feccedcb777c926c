"""Identity check of the few-shot stage across a refactoring: the demo's few-shot evaluation
(``configs/demo.yaml`` with ``train.epochs=6``) of a saved pretrained encoder and of the
random-init encoder, compared number for number with a reference ``trace.json`` written by an
earlier version of medcl (keys ``fewshot``, ``ceiling``, ``paired``).

Usage::

    python bench/fewshot_trace.py COHORT_DIR ENCODER_PT REFERENCE_JSON [OUT_JSON]

Exits 1 at the first difference (its path in the structure is printed), 0 when all equal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcl.config import config_to_dict, load_config  # noqa: E402
from medcl.data.cohort import Cohort  # noqa: E402
from medcl.fewshot.suite import evaluate_encoders  # noqa: E402
from medcl.models import build_encoder  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402


def _plain(obj):
    """``obj`` serialised and read back as the reference was (numpy values as lists/floats)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else float(o)))


def first_difference(a, b, path: str = "") -> str | None:
    """Where ``a`` and ``b`` first differ (``None`` if equal); NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{path}: keys {list(a)} != {list(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{path}/{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{path}[{i}]"))), None)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return None
    return None if (a == b and type(a) is type(b)) else f"{path}: {a!r} != {b!r}"


def main(argv: list[str]) -> int:
    cohort_dir, encoder_pt, reference = Path(argv[0]), Path(argv[1]), Path(argv[2])
    cfg = load_config("configs/demo.yaml", ["train.epochs=6"])
    meta = {"arch": cfg.model.arch, "conv1_t_stride": cfg.model.conv1_t_stride, "widen_factor": cfg.model.widen_factor,
            "view_size": cfg.augment.view_size, "data": config_to_dict(cfg)["data"]}
    pretrained = load_encoder(encoder_pt, meta)
    rnd = build_encoder(cfg.model.arch, cfg.model.conv1_t_stride, cfg.model.widen_factor, seed=cfg.train.seed).eval()
    t0 = time.perf_counter()
    fs = evaluate_encoders(cfg, Cohort.load(cohort_dir), {"pretrained": pretrained, "random_init": rnd})
    now = _plain({"fewshot": fs.results, "ceiling": fs.ceiling, "paired": fs.paired})
    if len(argv) > 3:
        Path(argv[3]).write_text(json.dumps(now, indent=1))
    ref = json.loads(reference.read_text())
    for key in ("fewshot", "ceiling", "paired"):
        diff = first_difference(ref[key], now[key], key)
        if diff:
            print(f"DIFFERENT {diff}")
            return 1
        print(f"identical: {key}")
    print(f"few-shot results identical to {reference} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
