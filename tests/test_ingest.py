"""NIfTI ingest: orientation, spacing, quarantine of bad files, resume, no identifiers."""

import csv

import nibabel as nib
import numpy as np
import pytest
from support import head_volume

from medcl.config import DataConfig
from medcl.data.cohort import Cohort
from medcl.data.ingest import IngestError, ingest, preprocess, preprocess_file


def _head(shape=(40, 48, 40)):
    """A smooth ellipsoidal 'head' with an asymmetric bright blob (so flips are visible)."""
    return head_volume(shape, (slice(shape[0] // 4, shape[0] // 4 + 5), slice(20, 25), slice(18, 22)), 80.0)


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_las_file_gives_the_same_array_as_ras(tmp_path):
    data = _head()
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = ras.copy()
    las[0, 0] = -2.0
    las[0, 3] = 2.0 * (data.shape[0] - 1)  # same world coordinates for every voxel
    a = preprocess_file(_save(tmp_path / "a.nii.gz", data, ras), DataConfig(spacing=2.0))
    b = preprocess_file(_save(tmp_path / "b.nii.gz", data[::-1].copy(), las), DataConfig(spacing=2.0))
    assert a.image.shape == b.image.shape
    assert np.allclose(a.image, b.image, atol=1e-5)


def test_resampled_to_target_spacing(tmp_path):
    data = _head((60, 60, 30))
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    pre = preprocess_file(_save(tmp_path / "s.nii", data, aff), DataConfig(spacing=2.0, crop_margin=100))
    assert pre.image.shape == (30, 30, 30)
    inside = pre.image[pre.mask]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3


@pytest.mark.parametrize("data,affine,reason", [
    (np.full((10, 10, 10), np.nan, np.float32), np.eye(4), "NaN or Inf"),
    (np.ones((10, 10, 10), np.float32), np.eye(4), "constant image"),
    (np.ones((10, 10, 1), np.float32), np.eye(4), "2D"),
    (_head(), np.diag([0.0, 1.0, 1.0, 1.0]), "spacing"),
])
def test_bad_volumes_get_one_line_reasons(data, affine, reason):
    with pytest.raises(IngestError, match=reason) as exc:
        preprocess(data, affine, DataConfig())
    assert "\n" not in str(exc.value)


def test_too_large_volume_is_refused_with_an_estimate():
    with pytest.raises(IngestError, match=r"too large: \(50, 50, 50\) needs ~0\.5 MiB"):
        preprocess(np.zeros((50, 50, 50), np.float32), np.eye(4), DataConfig(max_voxels=1000))
    from medcl.data.errors import check_size

    with pytest.raises(IngestError, match=r"needs ~32\.0 GiB as float32 \(limit data.max_voxels=64000000\)"):
        check_size((2048, 2048, 2048), DataConfig().max_voxels)   # refused from the shape, nothing allocated


def test_batch_goes_on_counts_add_up_and_resume_is_cached(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _save(src / f"sub-p{i}_T1w.nii.gz", _head() * (1 + 0.1 * i), np.diag([2.0, 2, 2, 1]))
    (src / "sub-bad_T1w.nii.gz").write_bytes(b"")                       # zero bytes
    full = (src / "sub-p0_T1w.nii.gz").read_bytes()
    (src / "sub-cut_T1w.nii.gz").write_bytes(full[: len(full) // 2])      # truncated gzip
    (src / "notes.txt").write_text("not an image")
    labels = tmp_path / "labels.csv"
    labels.write_text("subject,label\np0,a\np1,b\np2,a\n")
    out = tmp_path / "cohort"
    res = ingest([src], out, DataConfig(spacing=4.0), labels_csv=labels, progress=False)
    c = res.counts()
    assert c == {"found": 5, "ingested": 3, "cached": 0, "quarantined": 2, "ignored": 1, "skipped": 0, "label_issues": 0}
    assert c["found"] == c["ingested"] + c["cached"] + c["quarantined"]
    with open(out / "quarantine.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"].rsplit("/", 1)[1] for r in rows} == {"sub-bad_T1w.nii.gz", "sub-cut_T1w.nii.gz"}
    assert all(r["reason"] and "\n" not in r["reason"] for r in rows)
    cohort = Cohort.load(out)
    assert sorted(cohort.labels.tolist()) == ["a", "a", "b"]
    # the manifest and file names carry pseudonyms only, never the site's subject ids
    text = (out / "manifest.csv").read_text() + " ".join(p.name for p in (out / "arrays").iterdir())
    assert all(k.startswith("scan-") for k in cohort.scan_keys)
    for sid in ("sub-p0", "sub-p1", "sub-p2", "p0_T1w"):
        assert sid not in text
    again = ingest([src], out, DataConfig(spacing=4.0), labels_csv=labels, progress=False)
    assert again.counts()["cached"] == 3 and again.counts()["ingested"] == 0


def test_same_subject_same_key_across_runs_with_one_secret(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _save(src / "sub-x_T1w.nii.gz", _head(), np.diag([2.0, 2, 2, 1]))
    ingest([src], tmp_path / "c1", DataConfig(spacing=4.0), progress=False)
    ingest([src], tmp_path / "c2", DataConfig(spacing=4.0), progress=False)
    assert Cohort.load(tmp_path / "c1").subjects.tolist() == Cohort.load(tmp_path / "c2").subjects.tolist()
