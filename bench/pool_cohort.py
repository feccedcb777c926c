"""A larger unlabelled pretraining pool for the ablation (docs/methods.md, row E10): the cohort
``BASE`` with every scan of the cohort ``EXTRA`` added to its ``train`` split, so that
``bench/ablation.py`` pretrains on both while it evaluates on ``BASE``'s unchanged ``test`` split.

    python bench/pool_cohort.py BASE EXTRA OUT

``EXTRA``'s subject and scan keys get an ``x`` prefix (two demo simulations with different seeds
name their subjects and files alike, so their pseudonyms collide); its arrays are hard-linked
into ``OUT/arrays`` under the prefixed names (copied when linking fails). Both cohorts must have been ingested with the same
``data`` settings; their manifests must have the same columns.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path


def main(base: Path, extra: Path, out: Path) -> int:
    shutil.copytree(base, out)
    with open(base / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    with open(extra / "manifest.csv", newline="") as fh:
        added = [{**r, "scan_key": "x" + r["scan_key"], "subject_key": "x" + r["subject_key"], "split": "train"}
                 for r in csv.DictReader(fh)]
    for f in (extra / "arrays").iterdir():
        target = out / "arrays" / ("x" + f.name)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows + added)
    print(f"{out}: {len(rows)} scans of {base} + {len(added)} train scans of {extra}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*map(Path, sys.argv[1:])))
