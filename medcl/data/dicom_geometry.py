"""DICOM geometry: which frames form a volume, and where each voxel lies.

Pure functions on :class:`Frame` records (no file is read here): the selection rules of a
series (:func:`skip_reason`), its split into volumes (:func:`group_frames`, PS3.3 C.7.6.2) and
the placement of its slices along the slice normal with the RAS affine (:func:`plan_volume`),
which refuses gaps, duplicates, uneven spacing and sheared stacks beyond what the header's
own precision explains (:func:`written_precision`: positions are decimal strings, rounded
by the scanner). ``diag(-1, -1, 1)`` turns
DICOM's LPS patient coordinates into RAS, as dcm2niix and nibabel do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from medcl.data.errors import IngestError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series, with what grouping and placing need (no identifier but the
    series UID and patient ID, which only ever feed the keyed hash)."""

    path: str
    frame: int                       # index in a multi-frame file; -1 for a single-frame file
    series_uid: str
    patient_id: str
    modality: str
    description: str
    image_type: tuple[str, ...]
    sop_class: str
    rows: int
    cols: int
    spacing: tuple[float, float] | None          # PixelSpacing: (row spacing, column spacing) mm
    orientation: tuple[float, ...] | None        # ImageOrientationPatient: 6 direction cosines
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm, LPS)
    slope: float = 1.0
    intercept: float = 0.0
    echo: str = ""                   # echo number / effective echo time: echoes are split
    stack: str = ""                  # enhanced MR StackID: stacks are split
    temporal: str = ""               # volume index within a 4D series
    mosaic: bool = False             # Siemens mosaic (several slices tiled in one image)
    n_frames: int = 1
    # half a unit of the last digit each value was written with (mm; direction cosines): how
    # far the scanner's rounding may have moved it (:func:`written_precision`); 0 = exact
    position_precision: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation_precision: float = 0.0


def written_precision(texts, n: int) -> tuple[float, ...] | None:
    """Half a unit of the last written digit of each of ``n`` Decimal String values (PS3.5
    6.2: "-98.4" -> 0.05, "1.50" -> 0.005, "3e1" -> 5), or None when they are not ``n`` numbers.

    A scanner rounds positions and direction cosines to what it writes (some to one decimal,
    some to 16 characters), so this is how far a value as read may lie from the true one."""
    try:
        exps = [Decimal(str(t).strip()).as_tuple().exponent for t in texts]
    except (InvalidOperation, TypeError, ValueError):
        return None
    if len(exps) != n or not all(isinstance(e, int) for e in exps):
        return None
    return tuple(0.5 * 10.0 ** min(e, 300) for e in exps)


def texts_of(value) -> list[str] | None:
    """The values of a (multi-valued) element as written, or None."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [str(value)]
    return [str(v) for v in value]


def precision(ipp: list[str] | None, iop: list[str] | None) -> dict:
    """``position_precision`` and ``orientation_precision`` of a frame from the values as written
    (:func:`written_precision`); 0 where they are missing."""
    p = written_precision(ipp, 3) if ipp is not None else None
    o = written_precision(iop, 6) if iop is not None else None
    finer = [v for v in o or () if v < 0.5]          # "0", "1", "-1" are exact (an axis-aligned cosine)
    return {"position_precision": p or (0.0, 0.0, 0.0), "orientation_precision": min(finer) if finer else 0.0}


# ------------------------------------------------------------------------------- selecting


def skip_reason(frame: Frame, modalities: tuple[str, ...], include: str, exclude: str,
                skip_image_types: tuple[str, ...]) -> str | None:
    """Why the series of ``frame`` is not a scan to ingest under the selection rules, or None."""
    if modalities and frame.modality.upper() not in {m.upper() for m in modalities}:
        return f"Modality {frame.modality or 'missing'} is not in data.dicom_modalities"
    hit = sorted({t.upper() for t in skip_image_types} & set(frame.image_type))
    if hit:
        return f"ImageType {'/'.join(hit)} is in data.dicom_skip_image_types"
    if include and not re.search(include, frame.description, re.IGNORECASE):
        return "SeriesDescription does not match data.dicom_include"
    if exclude and re.search(exclude, frame.description, re.IGNORECASE):
        return "SeriesDescription matches data.dicom_exclude"
    return None


def group_frames(frames: list[Frame]) -> list[list[Frame]]:
    """Split frames into volumes: one per series, stack, echo, image size, pixel spacing and
    orientation (a series that mixes them is split, PS3.3 C.7.6.2); mosaics one per series."""
    groups: dict[tuple, list[Frame]] = {}
    for f in frames:
        ori = tuple(round(v, 3) for v in f.orientation) if f.orientation else None
        spc = tuple(round(v, 4) for v in f.spacing) if f.spacing else None
        key = (f.series_uid, f.stack, f.echo, f.rows, f.cols, spc, ori, f.mosaic)
        groups.setdefault(key, []).append(f)
    return [sorted(g, key=lambda f: (f.path, f.frame)) for _, g in sorted(groups.items(), key=lambda kv: repr(kv[0]))]


# -------------------------------------------------------------------------------- placing


@dataclass
class Plan:
    """Where each decoded frame goes: ``volumes[t][k]`` is slice ``k`` of volume ``t``."""

    volumes: list[list[Frame]]
    affine: np.ndarray                # 4x4, RAS
    shape: tuple[int, int, int]       # (columns, rows, slices)
    mosaic: bool = False              # each volume is one Siemens mosaic file (geometry from its CSA header)


def directions(f: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = np.array(f.orientation[:3]), np.array(f.orientation[3:])
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise IngestError("ImageOrientationPatient (0020,0037) is not two orthonormal direction cosines")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _check_geometry_present(frames: list[Frame]) -> None:
    if any(f.position is None for f in frames):
        raise IngestError("DICOM without ImagePositionPatient (0020,0032): the slices cannot be placed")
    if any(f.orientation is None for f in frames):
        raise IngestError("DICOM without ImageOrientationPatient (0020,0037): the slices cannot be placed")
    if any(f.spacing is None for f in frames):
        raise IngestError("DICOM without PixelSpacing (0028,0030): the voxel size is unknown")
    if any(min(f.spacing) <= 0 for f in frames):
        raise IngestError(f"zero or negative PixelSpacing {list(frames[0].spacing)}")


def _split_volumes(frames: list[Frame], dist: np.ndarray, tol: float) -> list[list[int]]:
    """Frame indices per volume: one volume, or several when every position repeats once per
    temporal index (a 4D series); any other repeated position is a duplicate slice."""
    order = np.argsort(dist, kind="stable")
    same = np.diff(dist[order]) < tol
    if not same.any():
        return [order.tolist()]
    temporal = sorted({f.temporal for f in frames}, key=lambda t: (len(t), t))
    by_t = {t: [i for i in order if frames[i].temporal == t] for t in temporal}
    n = len(by_t[temporal[0]])
    if len(temporal) > 1 and all(len(v) == n for v in by_t.values()) and all(
            np.allclose(dist[v], dist[by_t[temporal[0]]], atol=tol) for v in by_t.values()):
        return [by_t[t] for t in temporal]
    k = int(np.flatnonzero(same)[0])
    if len({f.path for f in frames}) == 1 and frames[0].frame >= 0:
        raise IngestError(f"multi-frame image whose {len(frames)} frames share one position (no per-frame "
                          f"ImagePositionPatient): a cine, dose grid or 2D+time image, not a placed volume")
    raise IngestError(f"duplicate slice: {int(same.sum()) + 1} images share a position "
                      f"(at {dist[order][k]:.2f} mm along the slice normal)")


def plan_volume(frames: list[Frame], min_slices: int = 3, policy_4d: str = "quarantine") -> Plan:
    """Sort the frames of one group along the slice normal and derive the RAS affine.

    A gap (missing slice), a duplicate slice, uneven spacing or sheared positions beyond what
    rounding of the written values explains are errors, never resampled silently
    (:func:`check_even`, :func:`check_stacked`). A 4D series follows ``policy_4d``
    (quarantine | first | mean).
    """
    if not frames:
        raise IngestError("empty DICOM series")
    _check_geometry_present(frames)
    f0 = frames[0]
    if f0.mosaic:
        return _plan_mosaic(frames, policy_4d)
    row, col, normal = directions(f0)
    pos = np.array([f.position for f in frames])
    dist = pos @ normal
    # the scanner's precision per coordinate: the finest any slice was written with (a value
    # such as "-47" is "-47.0" with its zeros dropped)
    prec = np.array([f.position_precision for f in frames]).min(axis=0)
    err = float(prec @ np.abs(normal))                  # rounding, along the normal
    tol = 1e-3 + 1e-3 * float(np.ptp(dist) / max(len(frames) - 1, 1)) + 2 * err
    volumes = _split_volumes(frames, dist, tol)
    volumes = _apply_4d_policy(volumes, policy_4d, "series")
    first = volumes[0]
    if len(first) < min_slices:
        raise IngestError(f"2D image: {len(first)} slice(s), fewer than data.dicom_min_slices={min_slices}")
    check_even(dist[first], err)
    check_stacked(pos[first], normal, prec, f0.orientation_precision)
    p0, p1 = pos[first[0]], pos[first[-1]]
    dr, dc = f0.spacing
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = (p1 - p0) / (len(first) - 1)
    lps[:3, 3] = p0
    return Plan([[frames[i] for i in v] for v in volumes], LPS_TO_RAS @ lps, (f0.cols, f0.rows, len(first)))


def slack(step: float) -> float:
    """What placement may deviate beyond the written precision: 1% of a slice step (a scanner
    computing positions in single precision; a hundredth of a voxel changes no voxel), at least 2 um."""
    return max(0.01 * step, 2e-3)


def check_even(d: np.ndarray, err: float) -> None:
    """Sorted slice positions ``d`` along the normal (mm), each known to ``err`` mm as written:
    refuse a gap (a step over 1.5 times the median) and any slice further from the even grid
    through the first and last slice than rounding can explain (its own error plus that of
    the grid's ends: ``2 err``) plus :func:`slack`."""
    steps = np.diff(d)
    step = float(np.median(steps))
    big = int(np.argmax(steps))
    if steps[big] > 1.5 * step:
        raise IngestError(f"missing slice: a gap of {steps[big]:.2f} mm between slices {big} and {big + 1} "
                          f"where the others are {step:.2f} mm apart")
    even = (d[-1] - d[0]) / (len(d) - 1)
    off = np.abs(d - d[0] - even * np.arange(len(d)))
    allowed = 2 * err + slack(even)
    k = int(np.argmax(off))
    if off[k] > allowed:
        raise IngestError(f"uneven slice spacing: slice {k} lies {off[k]:.3f} mm off an even grid of {even:.3f} mm steps "
                          f"(allowed {allowed:.3f} mm: the rounding of the written positions plus 1% of a step)")


def check_stacked(pos: np.ndarray, normal: np.ndarray, prec: np.ndarray, orient_prec: float) -> None:
    """Refuse slices that drift sideways (gantry tilt, shear) beyond the rounding of the written
    positions (``prec`` mm per coordinate) and of the direction cosines (``orient_prec``: a
    normal off by ``2 sqrt(3) orient_prec`` moves a slice that much per mm of distance
    sideways) plus :func:`slack`; the tilt angle is in the reason."""
    d = pos @ normal
    lateral = pos - np.outer(d, normal)
    drift = np.linalg.norm(lateral - lateral[0], axis=1)
    reach = np.abs(d - d[0])
    even = float(np.ptp(d)) / max(len(d) - 1, 1)
    allowed = 2 * float(np.linalg.norm(prec)) + 2 * np.sqrt(3) * orient_prec * reach + slack(even)
    k = int(np.argmax(drift - allowed))
    if drift[k] > allowed[k]:
        angle = float(np.degrees(np.arctan2(drift[k], max(reach[k], 1e-9))))
        raise IngestError(f"slice positions are not stacked along the slice normal: slice {k} lies {drift[k]:.2f} mm "
                          f"sideways of the first, {reach[k]:.1f} mm along the normal ({angle:.1f} degrees: a "
                          f"gantry-tilted or sheared series, not resampled)")


def _apply_4d_policy(volumes: list, policy: str, what: str) -> list:
    if len(volumes) == 1:
        return volumes
    if policy == "first":
        return volumes[:1]
    if policy == "mean":
        return volumes
    raise IngestError(f"4D {what}: {len(volumes)} volumes (data.policy_4d={policy}; use first or mean to keep it)")


def _plan_mosaic(frames: list[Frame], policy_4d: str) -> Plan:
    """Siemens mosaic: geometry needs the CSA header, read with the pixels (see load_series)."""
    vols = _apply_4d_policy([[f] for f in sorted(frames, key=lambda f: (len(f.temporal), f.temporal, f.path))],
                            policy_4d, "mosaic series")
    return Plan(vols, np.eye(4), (0, 0, 0), mosaic=True)


# ------------------------------------------------------------------------------- decoding
