"""The markdown rows of docs/methods.md from the JSON lines that ``bench/ablation.py`` appended
to ``OUT/results.jsonl``: one row per group of runs that differ only in ``train.seed``, with the
mean ± sd over the seeds of the 5-shot balanced accuracy (prototype head) and of the full-label
linear probe, for the pretrained encoder, the random-init encoder of the same seeds and raw
voxels, and the per-seed 95% subject-bootstrap intervals beside them.

    python bench/ablation_table.py OUT/results.jsonl

A tag ``NAME_sSEED`` groups under ``NAME`` (``bench/ablation.py OUT/ ... simclr_s1 train.seed=1``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def group_name(tag: str) -> str:
    """``simclr_s2`` -> ``simclr``; a tag without a seed suffix is its own group."""
    return re.sub(r"_s\d+$", "", tag)


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def cis(cells: list) -> str:
    return "; ".join(f"[{c[1][0]:.3f}, {c[1][1]:.3f}]" for c in cells)


def rows(results: list[dict]) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(group_name(r["tag"]), []).append(r)
    out = ["| run | seeds | 5-shot pretrained, mean ± sd | per-seed 95% CI | random init | raw voxels "
           "| Δ 5-shot | probe pretrained | probe random init | Δ probe | loss first → last | s/step |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        def col(key: str) -> list[float]:
            return [r[key][0] for r in runs]
        d5 = [a - b for a, b in zip(col("pretrained"), col("random_init"))]
        dp = [a - b for a, b in zip(col("probe_pretrained"), col("probe_random_init"))]
        loss = f"{statistics.mean(r['loss_first_last'][0] for r in runs):.2f} → " \
               f"{statistics.mean(r['loss_first_last'][1] for r in runs):.2f}"
        out.append(f"| {name} | {len(runs)} | {mean_sd(col('pretrained'))} | {cis([r['pretrained'] for r in runs])} "
                   f"| {mean_sd(col('random_init'))} | {mean_sd(col('raw_voxels'))} | {statistics.mean(d5):+.3f} "
                   f"| {mean_sd(col('probe_pretrained'))} | {mean_sd(col('probe_random_init'))} "
                   f"| {statistics.mean(dp):+.3f} | {loss} | {statistics.mean(r['s_per_step'] for r in runs):.2f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    a = p.parse_args()
    results = [json.loads(line) for line in a.results.read_text().splitlines() if line.strip()]
    print("\n".join(rows(results)))


if __name__ == "__main__":
    main()
