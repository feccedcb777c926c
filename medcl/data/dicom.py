"""DICOM series to one 3D volume with a RAS affine.

The DICOM standard (PS3.3) sections this module follows:

* C.7.6.2 Image Plane Module: ``ImageOrientationPatient`` (row and column direction cosines),
  ``ImagePositionPatient`` (centre of the first voxel), ``PixelSpacing`` (row spacing, column
  spacing), all in the LPS patient coordinate system (C.7.6.2.1.1);
* C.7.6.1.1.2 Image Type: ``ORIGINAL``/``DERIVED`` and ``LOCALIZER`` select what is a scan;
* C.11.1 Modality LUT: ``RescaleSlope`` and ``RescaleIntercept`` give the stored values' units;
* C.7.6.16 Multi-frame Functional Groups: enhanced MR keeps the plane position, orientation,
  pixel measures and rescale of each frame in per-frame (or shared) functional group items.

A series is read as :class:`~medcl.data.dicom_geometry.Frame` records (one per 2D image: a
single-frame file or one frame of a multi-frame file), grouped into volumes and placed by
:mod:`medcl.data.dicom_geometry` (sorting along the slice normal, refusing gaps and duplicates),
then decoded by :func:`load_series`. Voxel ``[i, j, k]`` is column ``i``, row ``j`` of slice ``k``, so the affine's
columns are ``row direction * column spacing``, ``column direction * row spacing`` and the step
between slices, and ``diag(-1, -1, 1)`` turns LPS into RAS, as dcm2niix and nibabel do.

Reasons raised as :class:`IngestError` never quote a header value (names, IDs, dates, UIDs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medcl.data import dicomfast
from medcl.data.dicom_geometry import LPS_TO_RAS, Frame, directions, plan_volume, precision, texts_of
from medcl.data.errors import IngestError, check_size

NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
NATIVE_LITTLE_ENDIAN = set(NATIVE)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@contextlib.contextmanager
def quiet():
    """Silence pydicom's warnings and log lines while headers are read: they quote header
    values ("Invalid value for VR DA: '19580399'"), which must not reach logs."""
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


class NotDicom(Exception):
    """The file is not DICOM at all (ignored, not quarantined)."""


# --------------------------------------------------------------------------------- reading


def scrub(message: str) -> str:
    """First line of an exception message with quoted values removed (they may be PHI)."""
    line = (message.splitlines() or [""])[0]
    return printable(_QUOTED.sub("<value>", line), 160)


def printable(text: str, limit: int = 64) -> str:
    """``text`` in printable ASCII (``?`` for the rest), at most ``limit`` characters: one line."""
    return re.sub(r"[^\x20-\x7e]", "?", text)[:limit]


def frame_count(ds: Dataset, path: str) -> int:
    """NumberOfFrames (0028,0008), checked: a number, at least 1, and no more frames than the
    file's bytes can hold (a frame takes at least 8 bytes, uncompressed its full size)."""
    try:
        n, size = int(ds.get("NumberOfFrames", 1) or 1), Path(path).stat().st_size
    except (TypeError, ValueError, OverflowError):
        raise IngestError("NumberOfFrames (0028,0008) is not a number") from None
    except OSError as exc:
        raise IngestError(_os_reason(exc)) from None
    shown = str(n) if len(str(n)) <= 20 else str(n)[:16] + "..."
    if n < 1:
        raise IngestError(f"NumberOfFrames (0028,0008) is {shown}: an image has at least one frame")
    native = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", NATIVE[0])) in NATIVE_LITTLE_ENDIAN
    per = max(int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * (int(ds.get("BitsAllocated") or 8) // 8), 1) \
        if native else 8
    if n * per > size:
        raise IngestError(f"NumberOfFrames (0028,0008) is {shown}: more frames than the file's {size} bytes hold")
    return n


def has_dicom_magic(path: Path) -> bool:
    """PS3.10 7.1: a DICOM file has a 128-byte preamble then ``DICM``."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: Path, pixels: bool) -> Dataset:
    """Parse ``path`` (header only unless ``pixels``); NotDicom or IngestError on failure."""
    path = Path(path)
    try:
        magic = has_dicom_magic(path)
    except OSError as exc:
        raise IngestError(_os_reason(exc)) from None
    if not magic and not path.name.lower().endswith(DICOM_SUFFIXES):
        raise NotDicom(str(path))
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels, force=not magic)
    except OSError as exc:
        raise IngestError(_os_reason(exc)) from None
    except Exception as exc:  # pydicom raises many types for broken files
        raise IngestError(f"unreadable DICOM ({type(exc).__name__}: {scrub(str(exc))})") from None
    if not magic and "SOPClassUID" not in ds and "Rows" not in ds:
        raise IngestError("not a DICOM file (no DICM preamble and no DICOM elements)")
    return ds


def _os_reason(exc: OSError) -> str:
    if exc.errno == 40:  # ELOOP
        return "symlink loop (too many levels of symbolic links)"
    return f"cannot read file ({exc.strerror or type(exc).__name__})"


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _first(ds: Dataset, name: str):
    seq = ds.get(name)
    return seq[0] if seq is not None and len(seq) else None


def frames_of(ds: Dataset, path: str) -> list[Frame]:
    """The :class:`Frame` records of a parsed file (several for enhanced multi-frame)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))
    if sop == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotDicom(path)   # a DICOMDIR index: not an image, ignored
    if "Rows" not in ds or "Columns" not in ds:
        name = printable(UID(sop).name) if sop else "no SOP class"
        raise IngestError(f"non-image DICOM ({name}): no pixel rows or columns")
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
    common = dict(
        path=path, series_uid=str(ds.get("SeriesInstanceUID", "")), patient_id=str(ds.get("PatientID", "")),
        modality=str(ds.get("Modality", "")), description=str(ds.get("SeriesDescription", "")),
        image_type=image_type, sop_class=sop, rows=int(ds.Rows), cols=int(ds.Columns),
    )
    n_frames = frame_count(ds, path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, common, n_frames)
    echo = ds.get("EchoNumbers", "")
    temporal = ds.get("TemporalPositionIdentifier", "") or ds.get("AcquisitionNumber", "")
    return [Frame(
        frame=-1 if n_frames == 1 else i, spacing=_floats(ds.get("PixelSpacing"), 2),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        slope=float(ds.get("RescaleSlope", 1.0) or 1.0), intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        echo=f"{echo}|{ds.get('EchoTime', '')}", temporal=str(temporal),
        mosaic="MOSAIC" in image_type, n_frames=n_frames,
        **precision(texts_of(ds.get("ImagePositionPatient")), texts_of(ds.get("ImageOrientationPatient"))),
        **common) for i in range(n_frames)]


def _enhanced_frames(ds: Dataset, common: dict, n_frames: int) -> list[Frame]:
    """PS3.3 C.7.6.16: each functional group comes from the per-frame item, else the shared one."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per = ds.PerFrameFunctionalGroupsSequence
    if len(per) != n_frames:
        raise IngestError(f"enhanced DICOM lists {len(per)} per-frame groups for {n_frames} frames")
    frames = []
    for i, fg in enumerate(per):
        def item(name: str):
            for grp in (fg, shared):
                if grp is not None and _first(grp, name) is not None:
                    return _first(grp, name)
            return Dataset()
        pvt, echo, content = item("PixelValueTransformationSequence"), item("MREchoSequence"), item("FrameContentSequence")
        ipp = item("PlanePositionSequence").get("ImagePositionPatient")
        iop = item("PlaneOrientationSequence").get("ImageOrientationPatient")
        frames.append(Frame(
            frame=i, spacing=_floats(item("PixelMeasuresSequence").get("PixelSpacing"), 2),
            orientation=_floats(iop, 6), position=_floats(ipp, 3), **precision(texts_of(ipp), texts_of(iop)),
            slope=float(pvt.get("RescaleSlope", 1.0) or 1.0), intercept=float(pvt.get("RescaleIntercept", 0.0) or 0.0),
            echo=str(echo.get("EffectiveEchoTime", "")), stack=str(content.get("StackID", "")),
            temporal=str(content.get("TemporalPositionIndex", "")), n_frames=n_frames, **common))
    return frames


def _fast_frames(v: dict, path: str) -> list[Frame] | None:
    """The one Frame of a file parsed by :mod:`medcl.data.dicomfast`, or None to use pydicom."""
    image_type = tuple(t.strip().upper() for t in v["ImageType"].split("\\")) if v.get("ImageType") else ()
    try:
        n_frames = int(v.get("NumberOfFrames") or 1)
    except ValueError:
        return None
    if "MOSAIC" in image_type or n_frames != 1 or (v.get("SamplesPerPixel") or 1) != 1 \
            or v.get("Rows") is None or v.get("Columns") is None or v.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        return None

    def nums(key: str, n: int):
        text = v.get(key)
        return None if text is None else _floats(text.split("\\"), n)

    def texts(key: str):
        return None if v.get(key) is None else v[key].split("\\")

    try:
        slope = float(v.get("RescaleSlope") or 1.0) or 1.0
        intercept = float(v.get("RescaleIntercept") or 0.0)
    except ValueError:
        return None
    return [Frame(
        path=path, frame=-1, series_uid=v.get("SeriesInstanceUID", ""), patient_id=v.get("PatientID", ""),
        modality=v.get("Modality", ""), description=v.get("SeriesDescription", ""), image_type=image_type,
        sop_class=v.get("SOPClassUID", ""), rows=int(v["Rows"]), cols=int(v["Columns"]),
        spacing=nums("PixelSpacing", 2), orientation=nums("ImageOrientationPatient", 6),
        position=nums("ImagePositionPatient", 3), slope=slope, intercept=intercept,
        echo=f"{v.get('EchoNumbers', '')}|{v.get('EchoTime', '')}",
        temporal=v.get("TemporalPositionIdentifier", "") or v.get("AcquisitionNumber", ""), n_frames=1,
        **precision(texts("ImagePositionPatient"), texts("ImageOrientationPatient")))]


def _fast_pixels(v: dict, buf: bytes) -> np.ndarray | None:
    bits, stored, signed = v.get("BitsAllocated"), v.get("BitsStored") or v.get("BitsAllocated"), v.get("PixelRepresentation") or 0
    if bits not in (8, 16) or (signed and stored != bits):
        return None
    count = int(v["Rows"]) * int(v["Columns"])
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    if v["_pixel_length"] < count * dtype.itemsize or len(buf) < v["_pixel_offset"] + count * dtype.itemsize:
        have = min(v["_pixel_length"], len(buf) - v["_pixel_offset"])
        raise IngestError(f"pixel data truncated: {have} bytes where {count * dtype.itemsize} are expected")
    arr = np.frombuffer(buf, dtype, count, v["_pixel_offset"]).reshape(int(v["Rows"]), int(v["Columns"]))
    return arr & ((1 << stored) - 1) if stored < bits and not signed else arr


FAST_MAX_BYTES = 16 << 20   # larger files are multi-frame or compressed: pydicom reads their header only


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise IngestError(_os_reason(exc)) from None


def read_frames(path: Path) -> list[Frame]:
    """Header-only read of one file: its frames, NotDicom, or IngestError (never another error)."""
    try:
        with quiet():
            return _read_frames(path)
    except (NotDicom, IngestError):
        raise
    except Exception as exc:  # a header value pydicom accepts but that makes no sense
        raise IngestError(f"invalid DICOM header ({type(exc).__name__}: {scrub(str(exc))})") from None


def _read_frames(path: Path) -> list[Frame]:
    path = Path(path)
    try:
        small = path.stat().st_size <= FAST_MAX_BYTES
    except OSError as exc:
        raise IngestError(_os_reason(exc)) from None
    if small:
        values = dicomfast.parse(_read_bytes(path))
        frames = _fast_frames(values, str(path)) if values is not None else None
        if frames is not None:
            return frames
    return frames_of(read_dataset(path, pixels=False), str(path))


def decoder_problem(transfer_syntax: str) -> str | None:
    """Why pixel data in ``transfer_syntax`` cannot be decoded here, or None if it can."""
    from pydicom.pixels import get_decoder

    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return f"unknown transfer syntax {printable(transfer_syntax)}"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"unsupported transfer syntax {uid.name} ({uid}): pydicom has no decoder for it"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        return (f"compressed transfer syntax {uid.name} needs a decoder that is not installed: {missing} "
                f"(pip install 'medcl[dicom]' adds pylibjpeg)")
    return None


def pixels(ds: Dataset) -> np.ndarray:
    """Stored pixel values, (frames, rows, cols) or (rows, cols); IngestError with the reason."""
    try:
        return _pixels(ds)
    except (NotImplementedError, KeyError, TypeError, ValueError, AttributeError) as exc:  # e.g. an unknown VR
        raise IngestError(f"invalid DICOM header ({type(exc).__name__}: {scrub(str(exc))})") from None


def _pixels(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise IngestError("DICOM without PixelData (7FE0,0010)")
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")) if hasattr(ds, "file_meta") else "1.2.840.10008.1.2"
    problem = decoder_problem(ts)
    if problem:
        raise IngestError(problem)
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise IngestError(f"colour image ({ds.get('PhotometricInterpretation', '?')}): a scan must be greyscale")
    fast = _native_pixels(ds, ts)
    if fast is not None:
        return fast
    try:
        return ds.pixel_array
    except Exception as exc:
        raise IngestError(f"cannot decode pixel data ({type(exc).__name__}: {scrub(str(exc))})") from None


def _native_pixels(ds: Dataset, ts: str) -> np.ndarray | None:
    """Uncompressed little-endian 8/16-bit data straight from the bytes (PS3.5 8.1.1)."""
    bits, stored, signed = (int(ds.get(k) or 0) for k in ("BitsAllocated", "BitsStored", "PixelRepresentation"))
    if ts not in NATIVE_LITTLE_ENDIAN or bits not in (8, 16) or (signed and stored != bits):
        return None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = (n_frames, int(ds.Rows), int(ds.Columns)) if n_frames > 1 else (int(ds.Rows), int(ds.Columns))
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    raw = ds.PixelData
    need = math.prod(shape) * dtype.itemsize
    if len(raw) < need:
        raise IngestError(f"pixel data truncated: {len(raw)} bytes where {need} are expected")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape)).reshape(shape)
    if stored < bits and not signed:
        arr = arr & ((1 << stored) - 1)
    return arr


def _mosaic_volume(ds: Dataset, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Siemens mosaic: tiles of one image are the slices; the CSA image header gives their
    number and the slice normal; ImagePositionPatient is corrected from the mosaic's corner
    to the first tile's (as nibabel's MosaicWrapper and dcm2niix do)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom warns that its DICOM wrappers are experimental
        from nibabel.nicom import csareader

    try:
        csa = csareader.get_csa_header(ds, "image")
        n = csareader.get_n_mosaic(csa) if csa else None
        normal = csareader.get_slice_normal(csa) if csa else None
    except Exception:
        n, normal = None, None
    if not n or normal is None:
        raise IngestError("Siemens mosaic without a readable CSA header (NumberOfImagesInMosaic): mosaic not supported")
    tiles = int(math.ceil(math.sqrt(n)))
    rows, cols = frame.rows // tiles, frame.cols // tiles
    check_size((cols, rows, n), 2**62)
    mosaic = pixels(ds)
    data = np.empty((cols, rows, n), np.float32)
    for k in range(n):
        i, j = divmod(k, tiles)
        data[:, :, k] = mosaic[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols].T
    row, col, _ = directions(frame)
    dr, dc = frame.spacing
    step = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 0)
    if step <= 0:
        raise IngestError("Siemens mosaic without SpacingBetweenSlices or SliceThickness")
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = np.asarray(normal, float) / np.linalg.norm(normal) * step
    lps[:3, 3] = np.array(frame.position) + row * dc * (frame.cols - cols) / 2 + col * dr * (frame.rows - rows) / 2
    return data * frame.slope + frame.intercept, LPS_TO_RAS @ lps


def load_series(members: list[tuple[str, int]], min_slices: int = 3, policy_4d: str = "quarantine",
                max_voxels: int = 2**62) -> tuple[np.ndarray, np.ndarray]:
    """(float32 volume, RAS affine) of one group of frames, given as ``(path, frame)`` pairs
    (``frame`` -1 for a single-frame file). Reads each file once, holding one series."""
    with quiet():
        return _load_series(members, min_slices, policy_4d, max_voxels)


def _load_series(members: list[tuple[str, int]], min_slices: int, policy_4d: str,
                 max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    if not members:
        raise IngestError("empty DICOM series")
    files = sorted({p for p, _ in members})
    wanted = set(members)
    frames: list[Frame] = []
    sources: dict[str, tuple] = {}       # path -> ("fast", values, bytes) | ("pydicom", dataset)
    for p in files:
        buf = _read_bytes(Path(p))
        values = dicomfast.parse(buf)
        fast = _fast_frames(values, p) if values is not None else None
        if fast is not None:
            sources[p] = ("fast", values, buf)
        else:
            del buf
            ds = read_dataset(Path(p), pixels=True)
            sources[p] = ("pydicom", ds)
            try:
                fast = frames_of(ds, p)
            except (TypeError, ValueError, OverflowError) as exc:   # as read_frames words it
                raise IngestError(f"invalid DICOM header ({type(exc).__name__}: {scrub(str(exc))})") from None
        frames.extend(f for f in fast if (f.path, f.frame) in wanted)
    if len(frames) != len(wanted):
        raise IngestError("the series changed on disk while it was read")
    f0 = frames[0]
    check_size((f0.cols, f0.rows, len(frames)), max_voxels)
    plan = plan_volume(frames, min_slices, policy_4d)
    if plan.mosaic:
        vols = [_mosaic_volume(sources[v[0].path][1], v[0]) for v in plan.volumes]
        for data, aff in vols[1:]:
            if data.shape != vols[0][0].shape or not np.allclose(aff, vols[0][1], atol=1e-3):
                raise IngestError("4D mosaic series whose volumes differ in geometry")
        data = vols[0][0] if len(vols) == 1 else np.mean([d for d, _ in vols], axis=0, dtype=np.float32)
        return data.astype(np.float32, copy=False), vols[0][1]
    check_size(plan.shape, max_voxels)
    cols, rows, n = plan.shape
    out = np.zeros((n, rows, cols), np.float32)          # slice-major: each slice is one contiguous block
    decoded: dict[str, np.ndarray] = {}
    for vol in plan.volumes:
        for k, f in enumerate(vol):
            src = sources[f.path]
            if f.path not in decoded:
                arr = _fast_pixels(src[1], src[2]) if src[0] == "fast" else None
                decoded[f.path] = arr if arr is not None else pixels(
                    src[1] if src[0] == "pydicom" else read_dataset(Path(f.path), pixels=True))
            img = decoded[f.path] if f.frame < 0 or decoded[f.path].ndim == 2 else decoded[f.path][f.frame]
            if img.shape != (f.rows, f.cols):
                raise IngestError(f"frame of {img.shape} pixels where the header says {(f.rows, f.cols)}")
            if f.slope == 1.0 and f.intercept == 0.0:
                out[k] += img
            else:
                out[k] += img * np.float32(f.slope) + np.float32(f.intercept)
    if len(plan.volumes) > 1:
        out /= len(plan.volumes)
    return out.transpose(2, 1, 0), plan.affine
