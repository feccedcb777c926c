"""DICOM series -> volume, checked against dcm2niix (the reference converter) on real DICOM:
pydicom's CT5N series, heudiconv's Siemens mosaic, and series written from real MRI voxels (the
MNI template, nibabel's anatomical.nii) in axial, sagittal, coronal, flipped, oblique and enhanced
multi-frame form: the same voxels and affines within 1e-3 mm."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcl.config import DataConfig
from medcl.data import dicom
from dicomwrite import mni_block, reorient, rotation, write_series
from support import TOL_MM, assert_same, dcm2niix, heudiconv_data, medcl_volume
from medcl.data.ingest import preprocess, preprocess_file
from medcl.data.sources import discover

CT5N = Path(pydicom.data.get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent


@pytest.fixture(scope="module")
def mni():
    return mni_block(step=2, box=(slice(18, 82), slice(20, 100), slice(30, 62)))


ORIENTATIONS = {
    "axial": ("R", "A", "S"),
    "sagittal": ("A", "S", "R"),
    "coronal": ("R", "S", "A"),
    "flipped_axial": ("L", "P", "I"),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_orthogonal_series_match_dcm2niix_and_source(name, mni, tmp_path):
    vol, aff = reorient(*mni, ORIENTATIONS[name])
    write_series(vol, aff, tmp_path / "dcm")
    ours = medcl_volume(tmp_path / "dcm")
    assert_same(ours, dcm2niix(tmp_path / "dcm", tmp_path / "ref"))
    assert_same(ours, nib.Nifti1Image(mni[0], mni[1]), atol_voxel=1e-4)   # int16 quantisation only
    # rows and columns as written; slices stacked along the slice normal (either sense)
    codes, written = nib.aff2axcodes(ours.affine), nib.aff2axcodes(aff)
    assert codes[:2] == written[:2] and {codes[2], written[2]} in ({"R", "L"}, {"A", "P"}, {"S", "I"}, {codes[2]})


@pytest.mark.parametrize("enhanced", [False, True], ids=["single_frame", "enhanced_multiframe"])
def test_oblique_series_match_dcm2niix(enhanced, mni, tmp_path):
    vol, aff = mni
    oblique = rotation((1.0, 2.0, 0.5), 17.0) @ aff
    write_series(vol, oblique, tmp_path / "dcm", enhanced=enhanced)
    ours = medcl_volume(tmp_path / "dcm")
    assert_same(ours, dcm2niix(tmp_path / "dcm", tmp_path / "ref"))
    np.testing.assert_allclose(ours.affine, oblique, atol=TOL_MM)       # axial slices: same voxel order


def test_nibabel_anatomical_big_endian_t1(tmp_path):
    img = nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")
    vol = np.asarray(img.dataobj, np.float32)
    write_series(vol, img.affine, tmp_path / "dcm")
    ours = medcl_volume(tmp_path / "dcm")
    assert_same(ours, dcm2niix(tmp_path / "dcm", tmp_path / "ref"))
    assert_same(ours, nib.Nifti1Image(vol, img.affine), atol_voxel=1e-4)


def test_pydicom_ct5n_series_matches_dcm2niix(tmp_path):
    cfg = DataConfig(dicom_modalities=("CT",))
    ours = medcl_volume(CT5N, cfg)
    ref = dcm2niix(CT5N, tmp_path / "ref")
    assert ours.shape == (16, 16, 5)
    assert_same(ours, ref, atol_voxel=0)
    # RescaleIntercept -1024 applied: Hounsfield units, not stored values
    raw = pydicom.dcmread(CT5N / "2062").pixel_array
    assert ours.get_fdata().min() == raw.min() - 1024 or ours.get_fdata().min() < raw.min()


def test_siemens_mosaic_matches_dcm2niix(tmp_path):
    mosaic = heudiconv_data() / "axasc35.dcm"
    shutil.copy(mosaic, tmp_path / "axasc35.dcm")
    ours = medcl_volume(tmp_path / "axasc35.dcm")
    assert ours.shape == (64, 64, 35)
    assert_same(ours, dcm2niix(tmp_path, tmp_path / "ref"), atol_voxel=0)


def test_mosaic_without_csa_header_is_a_clear_error(tmp_path):
    ds = pydicom.dcmread(heudiconv_data() / "axasc35.dcm")
    for elem in list(ds):
        if elem.tag.group == 0x0029:   # Siemens private CSA headers
            del ds[elem.tag]
    ds.save_as(tmp_path / "m.dcm")
    found = discover([tmp_path / "m.dcm"], DataConfig())
    with pytest.raises(dicom.IngestError, match="mosaic not supported"):
        dicom.load_series(list(found.scans[0].members))


def test_localizers_derived_and_sr_are_not_scans():
    found = discover([heudiconv_data()], DataConfig())
    reasons = {p.name: r for p, r in found.skipped}
    assert "scout" not in " ".join(str(s.path) for s in found.scans).lower()
    assert "matches data.dicom_exclude" in reasons["0001.dcm"]                    # anat-scout
    assert "ImageType DERIVED" in reasons[next(n for n in reasons if n.startswith("MRI_102TD"))]
    sr = {p.name: r for p, r in found.problems}
    assert sr["99+PhoenixDocument+00001.dcm"].startswith("non-image DICOM (Enhanced SR Storage)")


def test_real_enhanced_mr_frames_are_read_per_frame():
    f = next(heudiconv_data().glob("MRI_102TD*.dcm"))
    frames = dicom.read_frames(f)
    assert len(frames) == 3 and len({fr.position for fr in frames}) == 3
    assert all(fr.orientation is not None and fr.spacing is not None for fr in frames)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"])
def test_transfer_syntaxes_decode_to_the_same_pixels(name):
    ref = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).pixel_array
    path = pydicom.data.get_testdata_file(name)
    uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if dicom.decoder_problem(str(uid)):
        pytest.skip(dicom.decoder_problem(str(uid)))
    assert np.array_equal(dicom.pixels(pydicom.dcmread(path)), ref)


def test_missing_decoder_names_it(tmp_path):
    """In a Python where pylibjpeg and gdcm cannot be imported, JPEG-LS fails with a reason
    that names the decoders to install (a real pydicom, only the plugins are absent)."""
    code = (
        "import sys\n"
        "for m in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'gdcm', 'jpeg_ls', 'pyjpegls'): sys.modules[m] = None\n"
        "import pydicom\n"
        "from medcl.data import dicom\n"
        "ds = pydicom.dcmread(pydicom.data.get_testdata_file('MR_small_jpeg_ls_lossless.dcm'))\n"
        "try:\n    dicom.pixels(ds)\nexcept dicom.IngestError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = out.stdout.strip()
    assert "JPEG-LS Lossless" in line and "not installed" in line and "pylibjpeg" in line, out.stderr[-1500:]
    assert "\n" not in line


def test_rescale_slope_and_intercept_are_applied(mni, tmp_path):
    vol, aff = mni
    write_series(vol * 3.0 - 500.0, aff, tmp_path / "dcm")
    ours = medcl_volume(tmp_path / "dcm")
    ds = pydicom.dcmread(next((tmp_path / "dcm").iterdir()))
    assert float(ds.RescaleSlope) != 1.0 and float(ds.RescaleIntercept) != 0.0
    np.testing.assert_allclose(ours.get_fdata(), vol * 3.0 - 500.0, atol=0.05)


def test_series_mixing_echoes_is_split_into_two_volumes(mni, tmp_path):
    vol, aff = mni
    uid = pydicom.uid.generate_uid()
    write_series(vol, aff, tmp_path / "dcm" / "e1", series_uid=uid)
    write_series(vol * 0.5, aff, tmp_path / "dcm" / "e2", series_uid=uid)
    for f in (tmp_path / "dcm" / "e2").iterdir():
        ds = pydicom.dcmread(f)
        ds.EchoNumbers, ds.EchoTime = 2, 20
        ds.save_as(f)
    found = discover([tmp_path / "dcm"], DataConfig())
    assert len(found.scans) == 2 and not found.problems
    assert len({s.scan_id for s in found.scans}) == 2
    means = sorted(float(dicom.load_series(list(s.members))[0].mean()) for s in found.scans)
    assert means[0] == pytest.approx(means[1] / 2, rel=1e-3)


def test_selection_rules_pick_t1_series(mni, tmp_path):
    vol, aff = mni
    write_series(vol, aff, tmp_path / "a", description="t1_mprage_sag")
    write_series(vol, aff, tmp_path / "b", description="t2_tse_tra")
    found = discover([tmp_path], DataConfig(dicom_include="t1|mprage"))
    assert len(found.scans) == 1 and found.scans[0].path.parent.name == "a"
    assert found.skipped and "does not match data.dicom_include" in found.skipped[0][1]
    assert len(discover([tmp_path], DataConfig(dicom_modalities=("CT",))).scans) == 0


def test_preprocess_file_accepts_a_dicom_folder(mni, tmp_path):
    vol, aff = mni
    write_series(vol, aff, tmp_path / "dcm")
    cfg = DataConfig(spacing=4.0)
    from_dicom = preprocess_file(tmp_path / "dcm", cfg)
    direct = preprocess(vol, aff, cfg)
    assert from_dicom.image.shape == direct.image.shape
    assert np.abs(from_dicom.image - direct.image).max() < 1e-2
    with pytest.raises(dicom.IngestError, match="expected one scan, found 0"):
        preprocess_file(tmp_path, DataConfig(dicom_include="no-such-series"))


@pytest.mark.parametrize("name", ["CT5N", "MR_small.dcm", "MR_small_implicit.dcm", "written", "MR_small_RLE.dcm",
                                  "MR_small_bigendian.dcm"])
def test_fast_header_path_gives_what_pydicom_gives(name, mni, tmp_path):
    """medcl.data.dicomfast reads plain files without pydicom; it must agree with pydicom exactly
    (and leave compressed or big-endian files to pydicom)."""
    from medcl.data import dicomfast

    if name == "CT5N":
        files = sorted(CT5N.iterdir())
    elif name == "written":
        files = write_series(mni[0], mni[1], tmp_path / "dcm", identity={"PatientID": "ID 42", "EchoNumbers": 3})
    else:
        files = [Path(pydicom.data.get_testdata_file(name))]
    for f in files:
        values = dicomfast.parse(f.read_bytes())
        slow = dicom.frames_of(dicom.read_dataset(f, pixels=False), str(f))
        if name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm"):
            assert values is None
            continue
        fast = dicom._fast_frames(values, str(f))
        assert fast == slow
        assert np.array_equal(dicom._fast_pixels(values, f.read_bytes()), pydicom.dcmread(f).pixel_array)


def test_transfer_syntax_without_any_decoder_is_unsupported():
    reason = dicom.decoder_problem("1.2.840.10008.1.2.4.100")   # MPEG2 Main Profile / Main Level
    assert reason.startswith("unsupported transfer syntax MPEG2") and "no decoder" in reason
    assert dicom.decoder_problem("1.2.840.10008.1.2.1") is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fast_header_path_agrees_on_every_real_test_file():
    """Every DICOM file pydicom and heudiconv ship: where the fast path answers, it answers as pydicom."""
    from medcl.data import dicomfast

    roots = [Path(pydicom.data.get_testdata_file("MR_small.dcm")).parent, heudiconv_data()]
    checked = 0
    for f in sorted(p for r in roots for p in r.rglob("*") if p.is_file()):
        try:
            slow = dicom.frames_of(dicom.read_dataset(f, pixels=False), str(f))
        except Exception:   # not DICOM, or a header pydicom cannot make sense of
            continue
        values = dicomfast.parse(f.read_bytes())
        fast = dicom._fast_frames(values, str(f)) if values is not None else None
        if fast is not None:
            assert fast == slow, f.name
            checked += 1
    assert checked >= 30
