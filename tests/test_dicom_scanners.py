"""DICOM geometry as scanners write it: positions rounded to the decimals a scanner writes
(a GE-style oblique series), gantry tilt, MONOCHROME1, each built from real MRI voxels (the
MNI template) and checked against dcm2niix or refused with a one-line reason."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicomwrite import mni_block, rotation, write_series
from support import assert_same, dcm2niix, medcl_volume
from medcl.config import DataConfig
from medcl.data import dicom
from medcl.data.sources import discover


@pytest.fixture(scope="module")
def slab():
    """20 axial slices 7 mm apart, 2 mm in plane: the geometry of the GE proton-density series
    of issue 13, from the template's real voxels."""
    vol, aff = mni_block(step=1, box=(slice(20, 176), slice(20, 212), slice(25, 165)))
    return np.ascontiguousarray(vol[::2, ::2, ::7]), aff @ np.diag([2.0, 2.0, 7.0, 1.0])


def oblique(aff):
    return rotation((1.0, 0.5, 0.2), 30.0) @ aff   # a double-oblique plane: every coordinate moves


def _written_steps(folder) -> np.ndarray:
    """Steps between slices along the normal, from the headers as written."""
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return np.diff(np.sort([np.array(d.ImagePositionPatient, float) @ normal for d in dss]))


def test_ge_oblique_series_with_rounded_positions_converts(slab, tmp_path):
    vol, aff = slab
    write_series(vol, oblique(aff), tmp_path / "dcm", position_decimals=1, orientation_decimals=6)
    steps = _written_steps(tmp_path / "dcm")
    assert np.abs(steps - np.median(steps)).max() > 0.01 * np.median(steps)   # the old 1 % rule refused it
    ours = medcl_volume(tmp_path / "dcm")
    assert ours.shape == vol.shape
    # the rounding moves the grid by at most ~0.09 mm (0.05 mm per coordinate along the normal)
    np.testing.assert_allclose(ours.affine, oblique(aff), atol=0.1, rtol=0)
    assert_same(ours, dcm2niix(tmp_path / "dcm", tmp_path / "ref"), atol_mm=0.02)


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_rounded_positions_still_refuse_a_gap_and_uneven_spacing(decimals, slab, tmp_path):
    vol, aff = slab
    files = write_series(vol, oblique(aff), tmp_path / "gap", position_decimals=decimals)
    files[7].unlink()
    with pytest.raises(dicom.IngestError, match="missing slice"):
        medcl_volume(tmp_path / "gap")
    files = write_series(vol, oblique(aff), tmp_path / "uneven", position_decimals=decimals)
    ds = pydicom.dcmread(files[9])
    normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    moved = np.array(ds.ImagePositionPatient, float) + 2.2 * normal      # 2.2 mm: far beyond rounding
    ds.ImagePositionPatient = [f"{v:.{decimals}f}" for v in moved]
    ds.save_as(files[9])
    with pytest.raises(dicom.IngestError, match=r"uneven slice spacing: slice 9 lies"):
        medcl_volume(tmp_path / "uneven")


def test_written_precision_reads_the_decimals():
    from medcl.data.dicom_geometry import written_precision

    assert written_precision(["-98.4", "1.50", "3e1"], 3) == pytest.approx((0.05, 0.005, 5.0))
    assert written_precision(["1", "2"], 3) is None and written_precision(["x", "1", "2"], 3) is None


def gantry_tilted(aff: np.ndarray, degrees: float) -> np.ndarray:
    """The slice step tilted by ``degrees`` towards the column direction (a CT gantry tilt)."""
    out = aff.copy()
    step = np.linalg.norm(aff[:3, 2])
    out[:3, 2] = aff[:3, 2] + np.tan(np.radians(degrees)) * step * aff[:3, 1] / np.linalg.norm(aff[:3, 1])
    return out


def test_gantry_tilt_is_refused_with_its_angle(slab, tmp_path):
    vol, aff = slab
    write_series(vol, gantry_tilted(aff, 12.0), tmp_path / "dcm", position_decimals=2)
    with pytest.raises(dicom.IngestError) as exc:
        medcl_volume(tmp_path / "dcm")
    reason = str(exc.value)
    assert "gantry-tilted or sheared" in reason and "12.0 degrees" in reason and "\n" not in reason


def test_tilt_within_rounding_is_not_a_tilt(slab, tmp_path):
    vol, aff = slab
    write_series(vol, gantry_tilted(aff, 0.01), tmp_path / "dcm", position_decimals=1)   # 0.02 mm over 133 mm
    assert medcl_volume(tmp_path / "dcm").shape == vol.shape


def test_monochrome1_keeps_the_stored_values_as_dcm2niix_does(slab, tmp_path):
    """PS3.3 C.7.6.3.1.2: MONOCHROME1 says how to display (minimum white), not what the values
    are: medcl keeps the rescaled values, like dcm2niix."""
    vol, aff = slab
    files = write_series(vol, aff, tmp_path / "m1")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(f)
    ours = medcl_volume(tmp_path / "m1")
    assert_same(ours, dcm2niix(tmp_path / "m1", tmp_path / "ref"))
    write_series(vol, aff, tmp_path / "m2")
    np.testing.assert_array_equal(ours.get_fdata(), medcl_volume(tmp_path / "m2").get_fdata())


def test_rounded_oblique_series_ingests_end_to_end(slab, tmp_path):
    from medcl.data.ingest import ingest

    vol, aff = slab
    write_series(vol, oblique(aff), tmp_path / "src" / "dcm", position_decimals=1, identity={"PatientID": "P1"})
    res = ingest([tmp_path / "src"], tmp_path / "cohort", DataConfig(spacing=4.0, workers=1), progress=False)
    assert res.counts()["ingested"] == 1 and not res.quarantined
    assert discover([tmp_path / "src"], DataConfig()).scans[0].kind == "dicom"
