"""Sanity of a NIfTI header's geometry, read as stored (nibabel's loader quietly replaces a zero
pixdim by 1 mm and ignores the spatial unit).

NIfTI-1 (``nifti1.h``): the voxel grid comes from the sform (``sform_code > 0``), else the
qform (``qform_code > 0``: quaternion + ``pixdim[1:4]``), else ``pixdim`` alone; ``xyzt_units``
gives the spatial unit; ``scl_slope = 0`` means "no scaling" (kept: nibabel reads it so), a
NaN or infinite ``scl_slope`` (or ``scl_inter`` beside a slope) is refused. :func:`geometry_problem` names
what makes the grid unusable (one line, no header value beyond numbers); :func:`unit_scale`
turns the unit into millimetres. Choices and reasons: docs/data.md, "NIfTI headers".
"""

from __future__ import annotations

import numpy as np

VOXEL_MM = (0.01, 100.0)          # plausible voxel edges: microscopy-grade MRI to the coarsest scout
UNIT_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}   # xyzt_units & 7: unknown (read as mm), m, mm, um


def unit_scale(header) -> float:
    """Millimetres per header unit (``xyzt_units``: metres and micrometres are converted)."""
    try:
        code = int(header["xyzt_units"]) & 7
    except (KeyError, TypeError, ValueError):
        return 1.0
    return UNIT_MM.get(code, 1.0)


def _pixdim_problem(pixdim: np.ndarray, scale: float) -> str | None:
    for k, v in enumerate(pixdim, start=1):
        if not np.isfinite(v):
            return f"zero or invalid voxel spacing in the header: pixdim[{k}] is {v} (not a number)"
        if v <= 0:
            return f"zero or invalid voxel spacing in the header: pixdim[{k}] = {v:g} (must be positive)"
        mm = v * scale
        if not VOXEL_MM[0] <= mm <= VOXEL_MM[1]:
            return (f"implausible voxel size in the header: pixdim[{k}] = {mm:g} mm "
                    f"(outside {VOXEL_MM[0]:g}-{VOXEL_MM[1]:g} mm)")
    return None


def affine_problem(affine: np.ndarray, which: str, scale: float = 1.0) -> str | None:
    """Why a 4x4 voxel-to-world affine cannot place voxels: not finite, not invertible, or
    implausible voxel sizes (its column norms, in mm after ``scale``)."""
    a = np.asarray(affine, float)
    if not np.all(np.isfinite(a)):
        return f"NaN or infinite value in the {which} affine"
    norms = np.linalg.norm(a[:3, :3], axis=0)
    sizes = norms * scale
    if np.any(norms == 0) or abs(np.linalg.det(a[:3, :3])) <= 1e-6 * float(np.prod(norms)):
        return f"non-invertible {which} affine: its voxel axes are zero or (nearly) parallel"
    if np.any(sizes < VOXEL_MM[0]) or np.any(sizes > VOXEL_MM[1]):
        return (f"implausible voxel size in the {which} affine: {np.round(sizes, 4).tolist()} mm "
                f"(outside {VOXEL_MM[0]:g}-{VOXEL_MM[1]:g} mm)")
    return None


def forms_disagree(qform: np.ndarray, sform: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (header units) between where qform and sform put a corner voxel."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return float(np.linalg.norm((corners @ qform.T - corners @ sform.T)[:, :3], axis=1).max())


def geometry_problem(header, shape: tuple[int, ...]) -> str | None:
    """Why the header's voxel grid is unusable, or None (see the module docstring)."""
    scale = unit_scale(header)
    try:
        pixdim = np.asarray(header["pixdim"][1:4], float)
        scode, qcode = int(header["sform_code"]), int(header["qform_code"])
        slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    except (KeyError, TypeError, ValueError):
        return None                                   # not a NIfTI-1/2 header (e.g. ANALYZE): nibabel's affine
    if not np.isfinite(slope) or (slope != 0 and not np.isfinite(inter)):
        return f"invalid intensity scaling in the header (scl_slope {slope:g}, scl_inter {inter:g})"
    for name, code in (("sform_code", scode), ("qform_code", qcode)):
        if not 0 <= code <= 4:                        # nibabel would drop the form silently
            return f"invalid {name} {code} in the header (NIfTI-1 allows 0-4)"
    if scode == 0 or qcode > 0:                       # pixdim is the voxel size of the grid in use
        problem = _pixdim_problem(pixdim, scale)
        if problem:
            return problem
    forms = {}
    for name, code, get in (("sform", scode, header.get_sform), ("qform", qcode, header.get_qform)):
        if code > 0:
            try:
                forms[name] = np.asarray(get(), float)
            except Exception:                         # a quaternion nibabel cannot turn into a rotation
                return f"invalid {name} in the header"
            problem = affine_problem(forms[name], name, scale)
            if problem:
                return problem
    if len(forms) == 2:
        gap = forms_disagree(forms["qform"], forms["sform"], shape) * scale
        half = 0.5 * float(np.linalg.norm(forms["sform"][:3, :3], axis=0).min()) * scale
        if gap > half:
            return (f"qform and sform disagree by {gap:.2f} mm at a corner of the image (more than half a voxel, "
                    f"{half:.2f} mm): which geometry is right is unknown")
    return None
