"""Sources: DICOM trees of any depth, BIDS datasets, MedMNIST-style .npz, label CSVs joined on
subject or scan; worker processes and resume."""

from __future__ import annotations

import csv
import json
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcl.cli import main
from medcl.config import DataConfig
from medcl.data.cohort import Cohort
from dicomwrite import mni_block, write_series
from medcl.data.ingest import ingest
from medcl.data.sources import discover

CFG = DataConfig(spacing=6.0, workers=1)


@pytest.fixture(scope="module")
def block():
    return mni_block(step=4, box=(slice(4, 44), slice(4, 54), slice(8, 40)))


def _quarantine(out):
    with open(out / "quarantine.csv") as fh:
        return list(csv.DictReader(fh))


def test_dicom_tree_of_any_depth_non_dicom_ignored_and_counted(block, tmp_path):
    vol, aff = block
    src = tmp_path / "archive"
    write_series(vol, aff, src / "site" / "2024" / "patient_a" / "study" / "series1", identity={"PatientID": "PA1"})
    write_series(vol * 1.1, aff, src / "patient_b" / "s", identity={"PatientID": "PB2"})
    write_series(vol * 0.9, aff, src / "patient_b" / "t", identity={"PatientID": "PB2"})
    (src / "patient_b" / "README.txt").write_text("exported by PACS")
    (src / "patient_b" / "DICOMDIR_notes").write_bytes(b"\x00" * 300)     # no DICM preamble, no suffix
    (src / "site" / ".DS_Store").write_bytes(b"junk")
    res = ingest([src], tmp_path / "c", CFG, progress=False)
    c = res.counts()
    assert (c["found"], c["ingested"], c["quarantined"], c["ignored"]) == (3, 3, 0, 3)
    assert c["found"] == c["ingested"] + c["cached"] + c["quarantined"]
    cohort = Cohort.load(tmp_path / "c")
    assert len(set(cohort.subjects.tolist())) == 2                         # two series of one patient join
    assert {r["kind"] for r in cohort.rows} == {"dicom"}


def _bids(root, block, n=4):
    vol, aff = block
    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    rows = ["participant_id\tage\tdiagnosis"]
    for i in range(n):
        sub = f"sub-{i:02d}"
        ses = root / sub / "ses-1" if i % 2 else root / sub
        (ses / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(vol * (1 + 0.05 * i), aff), ses / "anat" / f"{sub}{'_ses-1' if i % 2 else ''}_T1w.nii.gz")
        (ses / "func").mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), ses / "func" / f"{sub}_task-rest_bold.nii.gz")
        rows.append(f"{sub}\t{30 + i}\t{'patient' if i % 2 else 'control'}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")


def test_bids_tree_t1w_with_labels_from_participants_tsv(block, tmp_path):
    _bids(tmp_path / "bids", block)
    found = discover([tmp_path / "bids"], CFG)
    assert sorted(s.subject_id for s in found.scans) == ["00", "01", "02", "03"]
    assert all(s.path.name.endswith("_T1w.nii.gz") for s in found.scans)
    assert sum("func" in str(p) for p, _ in found.ignored) == 4                # bold files: not anat T1w
    res = ingest([tmp_path / "bids"], tmp_path / "c", CFG, progress=False)
    assert res.counts()["ingested"] == 4
    assert sorted(Cohort.load(tmp_path / "c").labels.tolist()) == ["control", "control", "patient", "patient"]


def _medmnist(path, rng, n=(6, 2, 4), size=12):
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
        base = np.clip(1.1 - np.sqrt((g ** 2).sum(0)), 0, None)
        arrays[f"{split}_images"] = (255 * base[None] * rng.uniform(0.5, 1, (k, 1, 1, 1))).astype(np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2).reshape(k, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def test_medmnist_npz_keeps_the_given_splits_and_labels(tmp_path):
    _medmnist(tmp_path / "organmnist3d.npz", np.random.default_rng(0))
    res = ingest([tmp_path / "organmnist3d.npz"], tmp_path / "c", DataConfig(spacing=1.0, workers=1), progress=False,
                 test_fraction=0.5)
    assert res.counts()["ingested"] == 12 and not res.quarantined
    cohort = Cohort.load(tmp_path / "c")
    assert cohort.counts()["splits"] == {"test": 4, "train": 6, "val": 2}          # given, not re-drawn
    assert cohort.counts()["labels"] == {"0": 6, "1": 6}
    assert cohort.image(0).shape == (12, 12, 12) or min(cohort.image(0).shape) >= 8


def test_label_csv_joined_on_scan(block, tmp_path):
    vol, aff = block
    for name in ("a_T1w", "b_T1w", "c_T1w"):
        nib.save(nib.Nifti1Image(vol, aff), tmp_path / f"{name}.nii.gz")
    (tmp_path / "labels.csv").write_text("scan,label\na_T1w,x\nb_T1w,y\n")
    res = ingest([tmp_path], tmp_path / "c", CFG, labels_csv=tmp_path / "labels.csv", progress=False)
    assert sorted(Cohort.load(tmp_path / "c").labels.tolist()) == ["", "x", "y"]
    assert res.counts()["label_issues"] == 0


def test_workers_progress_and_resume_from_cache(block, tmp_path, capsys):
    vol, aff = block
    n = 8                                       # >= MIN_JOBS_FOR_POOL: worker processes are used
    for i in range(n):
        write_series(vol * (1 + 0.1 * i), aff, tmp_path / "src" / f"p{i}", identity={"PatientID": f"P{i}"})
    out = tmp_path / "c"
    rc = main(["ingest", str(tmp_path / "src"), "data.workers=2", "data.spacing=6", "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    counts = json.loads(captured.out.splitlines()[0])
    assert counts["ingested"] == n and counts["found"] == n
    assert "ingest" in captured.err and "scan" in captured.err                    # the progress bar
    first = json.loads((out / "ingest.json").read_text())["seconds"]
    t0 = time.perf_counter()
    again = ingest([tmp_path / "src"], out, DataConfig(spacing=6.0, workers=1), progress=False)
    assert again.counts()["cached"] == n and again.counts()["ingested"] == 0
    assert time.perf_counter() - t0 < 10
    # a changed file (same series, same scan key) is converted again, by its content hash
    f = sorted((tmp_path / "src" / "p0").iterdir())[5]
    ds = pydicom.dcmread(f)
    ds.RescaleIntercept = float(ds.RescaleIntercept) + 1.0
    ds.save_as(f)
    changed = ingest([tmp_path / "src"], out, DataConfig(spacing=6.0, workers=1), progress=False)
    assert (changed.counts()["ingested"], changed.counts()["cached"]) == (1, n - 1)
    other = ingest([tmp_path / "src"], out, DataConfig(spacing=5.0, workers=1), progress=False)
    assert other.counts()["cached"] == 0
    assert first > 0
