"""Every real DICOM series the package registries give us, converted by medcl and by dcm2niix.

Series: each file at the top of a data folder on its own, each deeper folder as one series.
Sources: pydicom's test files, pydicom-data (``data_store``), heudiconv's test data. With the
selection rules off (any modality, any image type), medcl either gives the same voxel grid in
world coordinates and the same values as dcm2niix, or refuses with a reason listed for that
series in docs/data.md ("Real DICOM series: conformance with dcm2niix").
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from support import assert_same, dcm2niix_all, heudiconv_data
from medcl.config import DataConfig
from medcl.data import dicom
from medcl.data.sources import discover

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"
CFG = DataConfig(dicom_modalities=(), dicom_skip_image_types=(), dicom_exclude="")


def roots() -> dict[str, Path]:
    out = {"pydicom": Path(pydicom.data.get_testdata_file("MR_small.dcm")).parent, "heudiconv": heudiconv_data()}
    data_store = pytest.importorskip("data_store", reason="pydicom-data (the test extra) is not installed")
    out["pydicom-data"] = Path(data_store.__file__).parent / "data"
    return out


def series_of(root: Path) -> list[Path]:
    """The top-level files one by one, and every folder that holds files as one series."""
    top = sorted(p for p in root.iterdir() if p.is_file() and not p.name.endswith((".py", ".pyc")))
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file() and p.parent != root
                      and "__pycache__" not in p.parts})
    return top + folders


def documented() -> list[tuple[str, str]]:
    """(series glob, reason prefix) rows of the table in docs/data.md."""
    text = DOCS.read_text().split("### Real DICOM series: conformance with dcm2niix", 1)[1]
    table = text[text.index("\n| series | reason |"):].strip().split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and not set(cells[0]) <= {"-", " "} and cells[0] != "series":
            rows += [(g.strip().strip("`"), cells[1]) for g in cells[0].split(",")]
    return rows


def files_of(series: Path) -> list[Path]:
    return [series] if series.is_file() else sorted(p for p in series.iterdir() if p.is_file())


def medcl_outcomes(series: Path) -> tuple[list, list[str]]:
    """(volumes medcl converts as (data, affine), reasons of what it refuses) for one series."""
    found = discover(files_of(series), CFG)
    volumes, reasons = [], [r for _, r in found.problems]
    for scan in found.scans:
        if scan.kind != "dicom":
            continue
        try:
            volumes.append(dicom.load_series(list(scan.members), CFG.dicom_min_slices, CFG.policy_4d))
        except dicom.IngestError as exc:
            reasons.append(str(exc))
    return volumes, reasons


def test_every_installable_series_converts_as_dcm2niix_or_is_refused_for_a_documented_reason(tmp_path):
    import nibabel as nib

    table = documented()
    converted, refused, problems = 0, 0, []
    for name, root in roots().items():
        for series in series_of(root):
            rel = f"{name}/{series.relative_to(root)}"
            volumes, reasons = medcl_outcomes(series)
            for reason in reasons:
                refused += 1
                assert "\n" not in reason
                if not any(fnmatch.fnmatch(rel, g) and reason.startswith(r) for g, r in table):
                    problems.append(f"| `{rel}` | {reason} |")
            if not volumes:
                continue
            case = tmp_path / re.sub(r"\W", "_", rel)
            (case / "in").mkdir(parents=True)
            for f in files_of(series):
                shutil.copy(f, case / "in" / f.name)
            refs, log = dcm2niix_all(case / "in", case / "ref")
            for data, affine in volumes:
                ours = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
                same = [r for r in refs if nib.as_closest_canonical(r).shape == ours.shape]
                assert same, f"{rel}: dcm2niix wrote no {ours.shape} volume: {[r.shape for r in refs]}\n{log}"
                assert_same(ours, same[0])
                converted += 1
    assert not problems, "refusals not documented in docs/data.md:\n" + "\n".join(problems)
    assert converted >= 2 and refused >= 50 and len(table) >= 10

