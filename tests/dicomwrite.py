"""Write a 3D volume as a DICOM MR series (single-frame files or one enhanced multi-frame file).

For tests and benchmarks: real anatomy (e.g. the MNI template) written in any orientation, so
that the DICOM reader can be checked against dcm2niix and against the source volume. The
inverse of :mod:`medcl.data.dicom`: voxel ``[i, j, k]`` becomes column ``i``, row ``j`` of
slice ``k`` (PS3.3 C.7.6.2.1.1), and the RAS affine becomes LPS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medcl.data.dicom_geometry import LPS_TO_RAS

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def ds_str(value: float) -> str:
    """A Decimal String (PS3.5 6.2: at most 16 characters) as precise as fits."""
    for digits in range(12, 3, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DICOM decimal string")


def geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(ImageOrientationPatient, PixelSpacing [row, col], LPS origin, LPS slice step) of a RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, float)
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = [*(lps[:3, 0] / dc), *(lps[:3, 1] / dr)]
    return iop, [dr, dc], lps[:3, 3], lps[:3, 2]


def quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 stored values with RescaleSlope/RescaleIntercept (PS3.3 C.11.1.1.2) for a float volume."""
    lo, hi = float(volume.min()), float(volume.max())
    slope = (hi - lo) / 30000.0 if hi > lo else 1.0
    slope = float(ds_str(slope))
    intercept = float(ds_str(lo))
    stored = np.clip(np.round((volume - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope, intercept


def _base(identity: dict, sop_class: str, series_uid: str, study_uid: str, frame_uid: str,
          description: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Manufacturer = "medcl-test"
    ds.PatientID = "anonymous"
    ds.PositionReferenceIndicator = ""
    for key, value in identity.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(volume: np.ndarray, affine: np.ndarray, out_dir: Path, identity: dict | None = None,
                 description: str = "T1w MPRAGE", modality: str = "MR", enhanced: bool = False,
                 series_uid: str | None = None, study_uid: str | None = None,
                 position_decimals: int | None = None, orientation_decimals: int | None = None) -> list[Path]:
    """Write ``volume`` (X, Y, Z; RAS ``affine``) as a series in ``out_dir``; returns the files.

    ``identity`` sets header fields (PatientName, PatientID, StudyDate, ...). Values are stored
    as int16 with a rescale slope and intercept. ``enhanced`` writes one Enhanced MR Image file
    with per-frame plane positions (PS3.3 C.7.6.16) instead of one file per slice.
    ``position_decimals`` / ``orientation_decimals`` round ImagePositionPatient /
    ImageOrientationPatient to that many decimals, as some scanners write them (default: as
    precise as a Decimal String holds).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"write_series needs a 3D volume, got shape {volume.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored, slope, intercept = quantise(volume.astype(np.float64))
    iop, spacing, origin, step = geometry(affine)
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), study_uid or generate_uid(), generate_uid()
    thickness = ds_str(np.linalg.norm(step))
    def fmt(v, decimals):
        return ds_str(v) if decimals is None else f"{float(v):.{decimals}f}"

    iop_s, spacing_s = [fmt(v, orientation_decimals) for v in iop], [ds_str(v) for v in spacing]
    positions = [[fmt(v, position_decimals) for v in origin + k * step] for k in range(volume.shape[2])]
    common = (identity or {}, series_uid, study_uid, frame_uid, description, modality)
    if enhanced:
        ds = _base(common[0], ENHANCED_MR_IMAGE_STORAGE, *common[1:])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.Rows, ds.Columns, ds.NumberOfFrames = volume.shape[1], volume.shape[0], volume.shape[2]
        shared = Dataset()
        pm, po, pvt = Dataset(), Dataset(), Dataset()
        pm.PixelSpacing, pm.SliceThickness, pm.SpacingBetweenSlices = spacing_s, thickness, thickness
        po.ImageOrientationPatient = iop_s
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = ds_str(slope), ds_str(intercept), "US"
        shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
        shared.PixelValueTransformationSequence = [pvt]
        ds.SharedFunctionalGroupsSequence = [shared]
        per = []
        for k in range(volume.shape[2]):
            fg, pp, fc = Dataset(), Dataset(), Dataset()
            pp.ImagePositionPatient = positions[k]
            fc.StackID, fc.InStackPositionNumber, fc.DimensionIndexValues = "1", k + 1, [1, k + 1]
            fg.PlanePositionSequence, fg.FrameContentSequence = [pp], [fc]
            per.append(fg)
        ds.PerFrameFunctionalGroupsSequence = per
        dim_uid = generate_uid()
        org = Dataset()
        org.DimensionOrganizationUID = dim_uid
        ds.DimensionOrganizationSequence = [org]
        idx = []
        for tag, seq in ((0x00209056, 0x00209111), (0x00209057, 0x00209111)):
            d = Dataset()
            d.DimensionOrganizationUID, d.DimensionIndexPointer, d.FunctionalGroupPointer = dim_uid, tag, seq
            idx.append(d)
        ds.DimensionIndexSequence = idx
        ds.InstanceNumber = 1
        ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0)).tobytes()
        path = out_dir / "enhanced.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [path]
    paths = []
    for k in range(volume.shape[2]):
        ds = _base(common[0], MR_IMAGE_STORAGE, *common[1:])
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = positions[k], iop_s, spacing_s
        ds.SliceThickness = ds.SpacingBetweenSlices = thickness
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = ds_str(slope), ds_str(intercept), "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out_dir / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def reorient(volume: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels and world mapping with the array axes in ``axcodes`` order (nibabel)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(axcodes)
    transform = nib.orientations.ornt_transform(ornt, target)
    out = nib.orientations.apply_orientation(volume, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """4x4 rotation about ``axis`` through the origin (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = np.eye(4)
    r[:3, :3] = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    return r




def mni_block(step: int = 1, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real MRI voxels for tests and benchmarks: the MNI ICBM152 2009 T1 template that nilearn
    ships, every ``step``-th voxel, cropped to ``box`` (voxel slices after the step)."""
    import nibabel as nib
    import nilearn.datasets

    img = nib.load(Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    data = np.asarray(img.dataobj, np.float32)[::step, ::step, ::step]
    affine = img.affine @ np.diag([step, step, step, 1.0])
    if box is not None:
        start = [s.start or 0 for s in box]
        data = data[box]
        affine = affine.copy()
        affine[:3, 3] = (affine @ [*start, 1])[:3]
    return np.ascontiguousarray(data), affine
