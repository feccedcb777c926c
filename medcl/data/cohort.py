"""A cohort cache on disk: ``manifest.csv`` plus one array file per scan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcl.data.ingest import read_manifest


@dataclass
class Cohort:
    root: Path
    rows: list[dict]

    @classmethod
    def load(cls, root: str | Path) -> "Cohort":
        root = Path(root)
        return cls(root, read_manifest(root))

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, split: str | None = None, labelled: bool | None = None) -> "Cohort":
        rows = [r for r in self.rows
                if (split is None or r["split"] == split)
                and (labelled is None or bool(r["label"]) == labelled)]
        return Cohort(self.root, rows)

    @property
    def scan_keys(self) -> np.ndarray:
        return np.array([r["scan_key"] for r in self.rows])

    @property
    def subjects(self) -> np.ndarray:
        return np.array([r["subject_key"] for r in self.rows])

    @property
    def labels(self) -> np.ndarray:
        return np.array([r["label"] for r in self.rows])

    def label_ids(self) -> list[int]:
        """Each scan's label as an integer class id: the non-empty labels, sorted, are 0, 1, ...;
        an unlabelled scan is -1. One mapping for every training data path, so a label's id
        does not depend on which backend made the batch."""
        ids = {name: k for k, name in enumerate(sorted({r["label"] for r in self.rows if r["label"]}))}
        return [ids[r["label"]] if r["label"] else -1 for r in self.rows]

    def image(self, i: int) -> np.ndarray:
        """float32 image of scan ``i`` (memory-mapped read, then converted)."""
        return np.load(self.root / "arrays" / f"{self.rows[i]['scan_key']}.npy", mmap_mode="r").astype(np.float32)

    def mask(self, i: int) -> np.ndarray:
        return np.load(self.root / "arrays" / f"{self.rows[i]['scan_key']}.mask.npy", mmap_mode="r").astype(bool)

    def transform(self, i: int) -> np.ndarray:
        """4x4 scan RAS mm -> MNI template RAS mm of scan ``i`` (``arrays/<scan_key>.xfm.npy``,
        written when ``data.register`` is on); the identity for a scan ingested without it."""
        path = self.root / "arrays" / f"{self.rows[i]['scan_key']}.xfm.npy"
        return np.load(path) if path.exists() else np.eye(4)

    def counts(self) -> dict:
        """Counts only (never identifiers): scans, subjects, per label and per split."""
        return {
            "scans": len(self.rows),
            "subjects": len(set(self.subjects.tolist())),
            "labels": dict(sorted(Counter(r["label"] or "unlabelled" for r in self.rows).items())),
            "splits": dict(sorted(Counter(r["split"] for r in self.rows).items())),
        }
