"""A cohort cache on disk: ``manifest.csv`` plus one array file per scan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcl.data.ingest import read_manifest
from medcl.data.normative import NormativeReference, load_reference


@dataclass
class Cohort:
    """``reference``: the cohort's normative reference (``data.normative: pool``), or ``None``;
    with one, :meth:`image` is the scan's deviation map and :meth:`intensity` its stored image."""
    root: Path
    rows: list[dict]
    reference: NormativeReference | None = None

    @classmethod
    def load(cls, root: str | Path) -> "Cohort":
        root = Path(root)
        return cls(root, read_manifest(root), load_reference(root))

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, split: str | None = None, labelled: bool | None = None) -> "Cohort":
        rows = [r for r in self.rows
                if (split is None or r["split"] == split)
                and (labelled is None or bool(r["label"]) == labelled)]
        return self.with_rows(rows)

    def with_rows(self, rows: list[dict]) -> "Cohort":
        """The same cache (and reference) with these manifest rows."""
        return Cohort(self.root, list(rows), self.reference)

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
        """What the encoder sees of scan ``i`` (float32): its deviation map when the cohort has a
        normative reference, else its stored image."""
        if self.reference is None:
            return self.intensity(i)
        return self.reference.apply(self.intensity(i), self.mask(i), source=self.rows[i]["scan_key"])

    def intensity(self, i: int) -> np.ndarray:
        """float32 stored image of scan ``i`` (memory-mapped read, then converted)."""
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
