"""Helpers shared by several test modules (imported as ``from support import ...``, as
``conftest`` is; no test module imports another)."""

from __future__ import annotations

import numpy as np


def head_volume(shape=(16, 18, 15), blob: tuple | None = None, blob_value: float = 60.0, seed: int | None = None,
                dtype=np.float32) -> np.ndarray:
    """A smooth ellipsoidal 'head' (``clip(1.2 - r, 0) * 100`` on a [-1, 1]^3 grid, ``r`` the
    distance to the centre), plus a bright ``blob_value`` cube so that orientation and flips
    are visible: at ``blob`` (three slices), or with ``seed`` a 3-voxel cube at a random corner
    in [4, 9)^3; none if neither is given. Computed in float64, returned as ``dtype``."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    img = np.clip(1.2 - np.sqrt((g ** 2).sum(0)), 0, None) * 100
    if seed is not None:
        x, y, z = np.random.default_rng(seed).integers(4, 9, size=3)
        blob = (slice(x, x + 3), slice(y, y + 3), slice(z, z + 3))
    if blob is not None:
        img[blob] += blob_value
    return img.astype(dtype)


# --- dcm2niix, the reference DICOM converter (tests/test_dicom_*.py) ---------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
TOL_MM = 1e-3


def heudiconv_data() -> Path:
    import pytest

    heudiconv = pytest.importorskip("heudiconv")
    return Path(heudiconv.__file__).parent / "tests" / "data"


def dcm2niix_all(src: Path, out: Path) -> tuple[list, str]:
    """Convert ``src`` (a folder) with dcm2niix: (every NIfTI it writes, its console output)."""
    import nibabel as nib

    assert DCM2NIIX.exists(), "dcm2niix binary missing: pip install dcm2niix (the test extra has it)"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-f", "ref_%s_%j", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=120)
    return [nib.load(f) for f in sorted(out.glob("*.nii"))], proc.stdout[-1500:] + proc.stderr[-1500:]


def dcm2niix(src: Path, out: Path):
    """Convert ``src`` (a folder) with dcm2niix; the one NIfTI it writes."""
    images, log = dcm2niix_all(src, out)
    assert len(images) == 1, log
    return images[0]


def medcl_volume(src: Path, cfg=None):
    import nibabel as nib

    from medcl.config import DataConfig
    from medcl.data import dicom
    from medcl.data.sources import discover

    found = discover([src], cfg or DataConfig())
    assert len(found.scans) == 1 and found.scans[0].kind == "dicom", (found.problems, found.skipped)
    data, affine = dicom.load_series(list(found.scans[0].members))
    return nib.Nifti1Image(data, affine)


def assert_same(a, b, atol_voxel: float = 1e-3, atol_mm: float = TOL_MM) -> None:
    """Same world position for every voxel and the same values (after canonical reordering)."""
    import nibabel as nib

    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=atol_mm, rtol=0)
    x, y = a.get_fdata(), b.get_fdata()
    np.testing.assert_allclose(x, y, atol=atol_voxel * max(1.0, float(np.abs(y).max())), rtol=0)
