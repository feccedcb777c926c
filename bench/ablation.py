"""One row of the pretraining ablation (docs/methods.md, "What limits the learning"): pretrain on
the ``train`` split of a cohort with ``configs/demo.yaml`` plus overrides, then score the
pretrained encoder, the random-init encoder of the same seed and the raw-voxel PCA baseline on
the same 500 3-way 5-shot prototype episodes of the ``test`` split, and the linear probe on all
labels. Appends one JSON line to ``OUT/results.jsonl`` and prints it.

    python bench/ablation.py COHORT OUT TAG [section.key=value ...]

The cohorts of the table are the demo's (``medcl demo`` writes ``OUT/cohort``), ingested once
without and once with ``data.register=affine data.brain_mask=template``; the commands are in
docs/methods.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medcl.data.cohort import Cohort  # noqa: E402
from medcl.fewshot.suite import evaluate_encoders  # noqa: E402
from medcl.models import build_encoder  # noqa: E402
from medcl.pipelines.pretrain import encoder_meta  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402
from medcl.train import pretrain  # noqa: E402
from medcl.validate import load_checked  # noqa: E402

FEWSHOT = ["fewshot.shots=[5]", "fewshot.heads=[prototype]", "fewshot.n_episodes=500", "fewshot.baselines=[raw_voxels]",
           "fewshot.budget_method=none", "fewshot.embedding_map=none", "fewshot.n_boot=300", "fewshot.pdf=false"]


def _cell(m: dict) -> list:
    return [round(m["balanced_accuracy"], 3), [round(x, 3) for x in m["ci95"]]]


def main(argv: list[str]) -> dict:
    cohort_dir, out, tag, overrides = Path(argv[0]), Path(argv[1]), argv[2], argv[3:]
    cfg = load_checked(ROOT / "configs" / "demo.yaml", FEWSHOT + overrides)
    cohort = Cohort.load(cohort_dir)
    t0 = time.perf_counter()
    res = pretrain(cfg, cohort.select(split="train"), out / tag, progress=False)
    seconds = time.perf_counter() - t0
    m = cfg.model
    encoders = {"pretrained": load_encoder(res.encoder_path, encoder_meta(cfg)),
                "random_init": build_encoder(m.arch, m.conv1_t_stride, m.widen_factor, seed=cfg.train.seed).eval()}
    t1 = time.perf_counter()
    fs = evaluate_encoders(cfg, cohort, encoders, log=lambda *a: None)
    row = {"tag": tag, "overrides": overrides, "steps": res.steps, "pretrain_s": round(seconds, 1),
           "s_per_step": round(seconds / max(res.steps, 1), 3), "eval_s": round(time.perf_counter() - t1, 1),
           "loss_first_last": [round(res.losses[0], 3), round(res.losses[-1], 3)]}
    row.update({src: _cell(heads["prototype"]["5"]) for src, heads in fs.results.items()})
    row.update({f"probe_{src}": _cell(r) for src, r in fs.ceiling.items()})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
