"""Bad input: every kind is quarantined as one line ``path: reason`` while the batch goes on
with the good scans, and ``found = ingested + cached + quarantined`` holds.

Each case builds a source folder with one good NIfTI scan (``sub-good``) and one bad item,
ingests it with real files, and checks the quarantine row and the counts."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from support import head_volume

from medcl.cli import main
from medcl.config import DataConfig
from medcl.data.cohort import Cohort
from dicomwrite import mni_block, write_series
from medcl.data.ingest import ingest

CFG = DataConfig(spacing=6.0, workers=1)


def _head(shape=(24, 24, 24)):
    return head_volume(shape)


def _nii(path: Path, data, affine=None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([4.0, 4, 4, 1]) if affine is None else affine), str(path))
    return path


@pytest.fixture(scope="module")
def block():
    return mni_block(step=4, box=(slice(4, 44), slice(4, 54), slice(14, 26)))   # 12 axial slices


def _series(src: Path, block, name="dcm", **kw) -> list[Path]:
    return write_series(*block, src / name, identity={"PatientID": "PID-BAD-1"}, **kw)


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path)


def _copy_as_new_instance(path: Path, new: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(new)


# --- builders: each makes one bad item under src; returns (cfg changes, labels CSV text, shots)

def truncated_nii_gz(src, block):
    p = _nii(src / "sub-cut_T1w.nii.gz", _head())
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def zero_byte_file(src, block):
    (src / "sub-empty_T1w.nii.gz").write_bytes(b"")


def not_an_image(src, block):
    (src / "sub-text_T1w.nii").write_text("this is a radiology report, not an image\n" * 20)


def nan_voxels(src, block):
    d = _head()
    d[3, 3, 3] = np.nan
    _nii(src / "sub-nan_T1w.nii.gz", d)


def inf_voxels(src, block):
    d = _head()
    d[5, 5, 5] = np.inf
    _nii(src / "sub-inf_T1w.nii.gz", d)


def constant_image(src, block):
    _nii(src / "sub-const_T1w.nii.gz", np.full((20, 20, 20), 7.0, np.float32))


def two_d_image(src, block):
    _nii(src / "sub-flat_T1w.nii.gz", _head((24, 24, 1)))


def four_d_image(src, block):
    _nii(src / "sub-bold_T1w.nii.gz", np.stack([_head()] * 3, axis=-1))


def zero_spacing(src, block):
    img = nib.Nifti1Image(_head(), None)          # no sform/qform: the affine comes from pixdim
    img.header.set_zooms((4.0, 0.0, 4.0))
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, str(src / "sub-zero_T1w.nii.gz"))


def negative_pixel_spacing(src, block):
    for f in _series(src, block):
        _edit(f, PixelSpacing=["-4", "4"])


def too_large_volume(src, block):
    _nii(src / "sub-huge_T1w.nii.gz", _head((64, 64, 64)))
    return {"max_voxels": 100_000}


def almost_empty_image(src, block):
    d = np.zeros((24, 24, 24), np.float32)
    d[12, 12, 12] = 1.0
    _nii(src / "sub-dot_T1w.nii.gz", d)


def dicom_without_image_position(src, block):
    files = _series(src, block)
    _edit(files[4], ImagePositionPatient=None)


def dicom_without_pixel_spacing(src, block):
    for f in _series(src, block):
        _edit(f, PixelSpacing=None)


def dicom_without_patient_id(src, block):
    for f in _series(src, block):
        _edit(f, PatientID=None)


def missing_slice(src, block):
    _series(src, block)[5].unlink()


def duplicate_slice(src, block):
    files = _series(src, block)
    _copy_as_new_instance(files[5], files[5].with_name("copy_of_5.dcm"))


def uneven_slice_spacing(src, block):
    files = _series(src, block)
    ds = pydicom.dcmread(files[6])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    _edit(files[6], ImagePositionPatient=[ipp[0], ipp[1], round(ipp[2] + 1.3, 4)])


def mixed_orientations_in_one_series(src, block):
    files = _series(src, block, name="good_series")   # the axial part is a good volume
    _copy_as_new_instance(files[3], src / "good_series" / "odd.dcm", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    return {"expect_good": 2}


def unsupported_transfer_syntax(src, block):
    f = _series(src, block, name="mpeg")[0]
    for g in sorted(f.parent.iterdir()):
        raw = g.read_bytes()
        # same length as "1.2.840.10008.1.2.1\0": an unknown (private) transfer syntax UID
        g.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1))


def truncated_pixel_data(src, block):
    files = _series(src, block)
    ds = pydicom.dcmread(files[2])
    ds.PixelData = ds.PixelData[:-256]
    ds.save_as(files[2])


def structured_report(src, block):
    shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), src / "report.dcm")


def presentation_state(src, block):
    f = _series(src, block, name="tmp")[0]
    ds = pydicom.dcmread(f)
    for name in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                 "SamplesPerPixel", "PhotometricInterpretation", "ImagePositionPatient", "ImageOrientationPatient",
                 "PixelSpacing", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # GSPS
    ds.Modality = "PR"
    ds.save_as(src / "gsps.dcm")
    shutil.rmtree(f.parent)
    return {"dicom_modalities": ("MR", "PR")}


def corrupt_dicom_header(src, block):
    f = _series(src, block, name="one")[0]
    (src / "cut.dcm").write_bytes(f.read_bytes()[:200] + b"\xff" * 40)
    shutil.rmtree(f.parent)


def not_dicom_with_dcm_suffix(src, block):
    (src / "scan.dcm").write_text("PK\x03\x04 a zip archive renamed to .dcm")


def dangling_symlink(src, block):
    os.symlink(src / "moved_away.nii.gz", src / "sub-gone_T1w.nii.gz")


def symlink_loop_file(src, block):
    os.symlink("sub-loop_T1w.nii.gz", src / "sub-loop_T1w.nii.gz")


def symlink_loop_folder(src, block):
    (src / "nested").mkdir()
    os.symlink("..", src / "nested" / "up")


def npz_without_images(src, block):
    np.savez(src / "features.npz", x=np.zeros(3))


def npz_of_2d_images(src, block):
    np.savez(src / "pathmnist.npz", train_images=np.zeros((5, 28, 28), np.uint8), train_labels=np.zeros((5, 1)))


def label_csv_unknown_subject(src, block):
    return {"labels": "subject,label\ngood,a\nghost,b\n"}


def conflicting_labels(src, block):
    _nii(src / "sub-other_T1w.nii.gz", _head() * 1.1)
    return {"labels": "subject,label\ngood,a\nother,b\nother,c\n", "expect_good": 1}


def class_smaller_than_shots(src, block):
    _nii(src / "sub-other_T1w.nii.gz", _head() * 1.1)
    return {"labels": "subject,label\ngood,a\nother,a\n", "shots": 2, "expect_good": 2}


# --- NIfTI headers as stored (issue 13 item 2): fields patched in the bytes of a .nii (NIfTI-1
# layout: dim at 40, datatype 70, pixdim 76, vox_offset 108, scl_slope 112, xyzt_units 123,
# qform_code 252, sform_code 254, srow_x/y/z 280/296/312, magic 344)

def _patched_nii(src: Path, name: str, data=None, affine=None, **fields) -> Path:
    import struct

    p = _nii(src / f"sub-{name}_T1w.nii", _head() if data is None else data, affine)
    raw = bytearray(p.read_bytes())
    for offset_fmt, value in fields.values():
        offset, fmt = offset_fmt
        struct.pack_into(fmt, raw, offset, *(value if isinstance(value, tuple) else (value,)))
    p.write_bytes(bytes(raw))
    return p


def pixdim_zero_with_qform(src, block):
    _patched_nii(src, "pd0", q=((252, "<h"), 1), pd=((88, "<f"), 0.0))


def pixdim_negative(src, block):
    _patched_nii(src, "pdneg", q=((252, "<h"), 1), pd=((84, "<f"), -2.0))


def pixdim_nan(src, block):
    _patched_nii(src, "pdnan", q=((252, "<h"), 1), pd=((80, "<f"), float("nan")))


def pixdim_absurdly_large(src, block):
    _patched_nii(src, "pdbig", q=((252, "<h"), 1), s=((254, "<h"), 0), pd=((80, "<f"), 5000.0))


def pixdim_absurdly_small(src, block):
    _patched_nii(src, "pdsmall", q=((252, "<h"), 1), s=((254, "<h"), 0), pd=((80, "<f"), 1e-5))


def qform_and_sform_disagree(src, block):
    _patched_nii(src, "qs", q=((252, "<h"), 1), t=((292, "<f"), 20.0))   # sform shifted 20 mm along x


def sform_not_invertible(src, block):
    _patched_nii(src, "sing", z=((312, "<4f"), (0.0, 0.0, 0.0, 0.0)))


def sform_with_nan(src, block):
    _patched_nii(src, "snan", x=((280, "<f"), float("nan")))


def sform_absurd_scale(src, block):
    _patched_nii(src, "sbig", x=((280, "<f"), 4e4))


def sform_code_out_of_range(src, block):
    _patched_nii(src, "code", s=((254, "<h"), 7))


def scl_slope_infinite(src, block):
    _patched_nii(src, "slinf", sl=((112, "<f"), float("inf")))


def complex_voxels(src, block):
    _nii(src / "sub-cplx_T1w.nii", _head().astype(np.complex64))


def rgb_voxels(src, block):
    rgb = np.zeros((24, 24, 24), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.diag([4.0, 4, 4, 1])), str(src / "sub-rgb_T1w.nii"))


def five_d_image(src, block):
    _nii(src / "sub-5d_T1w.nii.gz", _head()[..., None, None] * np.ones((1, 1, 1, 2, 2), np.float32))


def wrong_magic(src, block):
    _patched_nii(src, "magic", m=((344, "<4s"), b"xyz\0"))


def voxel_offset_past_the_end(src, block):
    _patched_nii(src, "off", v=((108, "<f"), 1e6))


def unknown_datatype_code(src, block):
    _patched_nii(src, "dtype", d=((70, "<h"), 1234))


def huge_dimensions_in_header(src, block):
    _patched_nii(src, "dims", d=((40, "<4h"), (3, 30000, 30000, 30000)))


# --- DICOM as scanners (and broken software) write it

def gantry_tilt(src, block):
    vol, aff = block
    tilted = aff.copy()
    tilted[:3, 2] += np.tan(np.radians(15)) * np.linalg.norm(aff[:3, 2]) * aff[:3, 1] / np.linalg.norm(aff[:3, 1])
    write_series(vol, tilted, src / "tilt", identity={"PatientID": "PID-BAD-1"})


def empty_bits_allocated(src, block):
    for f in _series(src, block):
        ds = pydicom.dcmread(f)
        ds["BitsAllocated"].value = None          # present, empty (a TypeError escaped before)
        ds.save_as(f)


def one_slice_shifted_sideways(src, block):
    files = _series(src, block)
    ds = pydicom.dcmread(files[5])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    _edit(files[5], ImagePositionPatient=[ipp[0] + 3.0, ipp[1], ipp[2]])


def negative_dimension(src, block):
    _patched_nii(src, "negdim", d=((46, "<h"), -1))


def orientation_not_orthonormal(src, block):
    for f in _series(src, block):
        _edit(f, ImageOrientationPatient=[1, 0, 0, 0.5, 0.5, 0])


def orientation_with_five_values(src, block):
    for f in _series(src, block):
        _edit(f, ImageOrientationPatient=[1, 0, 0, 0, 1])


def colour_dicom(src, block):
    for f in _series(src, block):
        ds = pydicom.dcmread(f)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(ds.Rows * ds.Columns * 3)
        ds.save_as(f)


def dicom_4d_series(src, block):
    files = _series(src, block)
    for f in files:
        _copy_as_new_instance(f, f.with_name("t2_" + f.name), AcquisitionNumber=2)
    for f in files:
        _edit(f, AcquisitionNumber=1)


def single_slice_dicom(src, block):
    for f in _series(src, block)[1:]:
        f.unlink()


def rescale_slope_not_a_number(src, block):
    import struct

    files = _series(src, _thick(), name="good_series")   # the other 15 slices still make a volume
    raw = bytearray(files[0].read_bytes())
    at = raw.index(b"\x28\x00\x53\x10DS")                 # (0028,1053) RescaleSlope, explicit VR
    n = struct.unpack_from("<H", raw, at + 6)[0]
    raw[at + 8:at + 8 + n] = b"abc".ljust(n)
    files[0].write_bytes(bytes(raw))
    return {"expect_good": 2}


def _thick():
    """16 axial slices: one slice less still makes a volume at data.spacing=6."""
    return mni_block(step=4, box=(slice(4, 44), slice(4, 54), slice(12, 28)))


def number_of_frames_huge(src, block):
    files = _series(src, _thick(), name="good_series")
    _edit(files[0], NumberOfFrames=2**31)         # a frame count no file holds (the fuzzer's hang)
    return {"expect_good": 2}


def number_of_frames_negative(src, block):
    files = _series(src, _thick(), name="good_series")
    _edit(files[-1], NumberOfFrames=-1)           # dropped every frame of the file before
    return {"expect_good": 2}


def multiframe_without_positions(src, block):
    vol, aff = block
    files = _series(src, block)
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 4
    ds.PixelData = ds.PixelData * 4
    for f in files:
        f.unlink()
    ds.save_as(src / "dcm" / "cine.dcm")


# --- what ingest accepts must train (issue 13 item 3)

def foreground_thinner_than_a_view(src, block):
    d = np.zeros((40, 40, 40), np.float32)                  # a 12 mm slab: 2 voxels at data.spacing=6
    d[5:35, 5:35, 17:23] = 100.0 + np.arange(30 * 30 * 6, dtype=np.float32).reshape(30, 30, 6) % 7
    _nii(src / "sub-thin_T1w.nii.gz", d, np.diag([2.0, 2, 2, 1]))


CASES = {
    "truncated_nii_gz": (truncated_nii_gz, r"unreadable NIfTI"),
    "zero_byte_file": (zero_byte_file, r"empty file \(0 bytes\)"),
    "not_an_image": (not_an_image, r"unreadable NIfTI"),
    "nan_voxels": (nan_voxels, r"NaN or Inf"),
    "inf_voxels": (inf_voxels, r"NaN or Inf"),
    "constant_image": (constant_image, r"constant image"),
    "two_d_image": (two_d_image, r"2D image"),
    "four_d_image": (four_d_image, r"4D image: 3 volumes .*data.policy_4d=quarantine"),
    "zero_spacing": (zero_spacing, r"zero or invalid voxel spacing"),
    "negative_pixel_spacing": (negative_pixel_spacing, r"zero or negative PixelSpacing"),
    "too_large_volume": (too_large_volume, r"volume too large: \(64, 64, 64\) needs ~1\.0 MiB as float32 \(limit data.max_voxels=100000\)"),
    "almost_empty_image": (almost_empty_image, r"no foreground found"),
    "dicom_without_image_position": (dicom_without_image_position, r"without ImagePositionPatient \(0020,0032\)"),
    "dicom_without_pixel_spacing": (dicom_without_pixel_spacing, r"without PixelSpacing \(0028,0030\)"),
    "dicom_without_patient_id": (dicom_without_patient_id, r"without PatientID \(0010,0020\)"),
    "missing_slice": (missing_slice, r"missing slice: a gap of 8\.00 mm .* 4\.00 mm apart"),
    "duplicate_slice": (duplicate_slice, r"duplicate slice: 2 images share a position"),
    "uneven_slice_spacing": (uneven_slice_spacing, r"uneven slice spacing"),
    "mixed_orientations_in_one_series": (mixed_orientations_in_one_series, r"mixed orientations, sizes or echoes in one series"),
    "unsupported_transfer_syntax": (unsupported_transfer_syntax, r"unknown transfer syntax|unsupported transfer syntax"),
    "truncated_pixel_data": (truncated_pixel_data, r"pixel data truncated"),
    "structured_report": (structured_report, r"non-image DICOM \(.*SR"),
    "presentation_state": (presentation_state, r"non-image DICOM \(Grayscale Softcopy Presentation State"),
    "corrupt_dicom_header": (corrupt_dicom_header, r"unreadable DICOM|non-image DICOM|not a DICOM file"),
    "not_dicom_with_dcm_suffix": (not_dicom_with_dcm_suffix, r"not a DICOM file|unreadable DICOM"),
    "dangling_symlink": (dangling_symlink, r"cannot read file \(No such file or directory\)"),
    "symlink_loop_file": (symlink_loop_file, r"symlink loop"),
    "symlink_loop_folder": (symlink_loop_folder, r"symlink loop \(folder already visited\)"),
    "npz_without_images": (npz_without_images, r"npz without train_images"),
    "npz_of_2d_images": (npz_of_2d_images, r"not a stack of 3D volumes"),
    "label_csv_unknown_subject": (label_csv_unknown_subject, r"line 3: subject matches no scan found"),
    "conflicting_labels": (conflicting_labels, r"conflicting labels for its subject in labels.csv \(lines 3, 4\)"),
    "class_smaller_than_shots": (class_smaller_than_shots, r"class 'a' has 2 scan\(s\) of 2 subject\(s\): too few for 2-shot"),
    "pixdim_zero_with_qform": (pixdim_zero_with_qform, r"zero or invalid voxel spacing in the header: pixdim\[3\] = 0"),
    "pixdim_negative": (pixdim_negative, r"pixdim\[2\] = -2 \(must be positive\)"),
    "pixdim_nan": (pixdim_nan, r"pixdim\[1\] is nan"),
    "pixdim_absurdly_large": (pixdim_absurdly_large, r"implausible voxel size in the header: pixdim\[1\] = 5000 mm"),
    "pixdim_absurdly_small": (pixdim_absurdly_small, r"implausible voxel size in the header: pixdim\[1\] = 1e-05 mm"),
    "qform_and_sform_disagree": (qform_and_sform_disagree, r"qform and sform disagree by 20\.00 mm"),
    "sform_not_invertible": (sform_not_invertible, r"non-invertible sform affine"),
    "sform_with_nan": (sform_with_nan, r"NaN or infinite value in the sform affine"),
    "sform_absurd_scale": (sform_absurd_scale, r"implausible voxel size in the sform affine"),
    "sform_code_out_of_range": (sform_code_out_of_range, r"invalid sform_code 7 in the header \(NIfTI-1 allows 0-4\)"),
    "scl_slope_infinite": (scl_slope_infinite, r"invalid intensity scaling in the header \(scl_slope inf"),
    "complex_voxels": (complex_voxels, r"complex64 voxels: a scan must hold one real number per voxel"),
    "rgb_voxels": (rgb_voxels, r"colour \(RGB\) image"),
    "five_d_image": (five_d_image, r"expected a 3D image, got 5 dimensions"),
    "wrong_magic": (wrong_magic, r"unreadable NIfTI"),
    "voxel_offset_past_the_end": (voxel_offset_past_the_end, r"unreadable NIfTI"),
    "unknown_datatype_code": (unknown_datatype_code, r"unreadable NIfTI"),
    "huge_dimensions_in_header": (huge_dimensions_in_header, r"volume too large: \(30000, 30000, 30000\)"),
    "gantry_tilt": (gantry_tilt, r"slice \d+ lies .* sideways of the first, .* \(15\.0 degrees: a gantry-tilted or sheared"),
    "empty_bits_allocated": (empty_bits_allocated, r"cannot decode pixel data \(AttributeError: Missing required element: \(0028,0100\)"),
    "one_slice_shifted_sideways": (one_slice_shifted_sideways, r"not stacked along the slice normal: slice 5 lies 3\.00 mm sideways"),
    "negative_dimension": (negative_dimension, r"invalid image dimensions in the header: shape \(24, 24, -1\)"),
    "orientation_not_orthonormal": (orientation_not_orthonormal, r"not two orthonormal direction cosines"),
    "orientation_with_five_values": (orientation_with_five_values, r"without ImageOrientationPatient"),
    "colour_dicom": (colour_dicom, r"colour image \(RGB\): a scan must be greyscale"),
    "dicom_4d_series": (dicom_4d_series, r"4D series: 2 volumes"),
    "single_slice_dicom": (single_slice_dicom, r"2D image: 1 slice\(s\)"),
    "rescale_slope_not_a_number": (rescale_slope_not_a_number, r"invalid DICOM header|unreadable DICOM"),
    "number_of_frames_huge": (number_of_frames_huge, r"NumberOfFrames \(0028,0008\) is 2147483648: more frames than the file's \d+ bytes hold"),
    "number_of_frames_negative": (number_of_frames_negative, r"NumberOfFrames \(0028,0008\) is -1: an image has at least one frame"),
    "multiframe_without_positions": (multiframe_without_positions, r"multi-frame image whose 4 frames share one position"),
    "foreground_thinner_than_a_view": (foreground_thinner_than_a_view, r"foreground thinner than the smallest view: [123] voxel\(s\) along axis 2 at data.spacing=6 mm"),
}


def test_at_least_50_kinds():
    assert len(CASES) >= 50


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_is_one_quarantine_line_and_the_batch_goes_on(kind, block, tmp_path):
    make, reason = CASES[kind]
    src = tmp_path / "src"
    src.mkdir()
    _nii(src / "sub-good_T1w.nii.gz", _head())
    opts = make(src, block) or {}
    labels = None
    if "labels" in opts:
        labels = tmp_path / "labels.csv"
        labels.write_text(opts["labels"])
    cfg_changes = {k: v for k, v in opts.items() if k in DataConfig.__dataclass_fields__}
    out = tmp_path / "cohort"
    res = ingest([src], out, replace(CFG, **cfg_changes), labels_csv=labels, progress=False, shots=opts.get("shots", 0))
    with open(out / "quarantine.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1, rows
    assert rows[0]["reason"] and "\n" not in rows[0]["reason"] and "PID-BAD" not in rows[0]["reason"]
    assert __import__("re").search(reason, rows[0]["reason"]), rows[0]
    c = res.counts()
    assert c["found"] == c["ingested"] + c["cached"] + c["quarantined"]
    assert c["ingested"] == opts.get("expect_good", 1)                      # the batch went on
    cohort = Cohort.load(out)
    assert len(cohort) == c["ingested"]
    if labels is not None:
        assert "a" in cohort.labels.tolist()


def test_4d_policy_first_and_mean_keep_the_scan(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    four_d_image(src, None)
    for policy in ("first", "mean"):
        res = ingest([src], tmp_path / policy, replace(CFG, policy_4d=policy), progress=False)
        assert res.counts()["ingested"] == 1 and not res.quarantined


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_is_quarantined(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _nii(src / "sub-good_T1w.nii.gz", _head())
    p = _nii(src / "sub-locked_T1w.nii.gz", _head())
    p.chmod(0)
    res = ingest([src], tmp_path / "c", CFG, progress=False)
    assert [r for _, r in res.quarantined] == ["cannot read file (Permission denied)"]


def test_cli_prints_path_colon_reason_and_counts(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _nii(src / "sub-good_T1w.nii.gz", _head())
    zero_byte_file(src, None)
    (src / "notes.txt").write_text("x")
    assert main(["ingest", str(src), "data.spacing=6", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"{src / 'sub-empty_T1w.nii.gz'}: empty file (0 bytes)" in err.splitlines()
    assert out.splitlines()[0] == ('{"found": 2, "ingested": 1, "cached": 0, "quarantined": 1, "ignored": 1, '
                                   '"skipped": 0, "label_issues": 0}')
