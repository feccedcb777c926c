"""NIfTI header choices that are not refusals (docs/data.md, "NIfTI headers"): scl_slope 0 is
"no scaling", metres and micrometres become millimetres, an sform wins over a broken pixdim.
The refusals (zero, negative, NaN or absurd pixdim, qform/sform disagreement, non-invertible
or NaN affines, NaN/inf scaling) are cases of tests/test_bad_input.py."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
import pytest
from support import head_volume

from medcl.config import DataConfig
from medcl.data import nifti_header
from medcl.data.readers import load_nifti


def _write(path, data, affine, **fields):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    raw = bytearray(path.read_bytes())
    for (offset, fmt), value in fields.values():
        struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))
    return path


def test_scl_slope_zero_means_no_scaling(tmp_path):
    stored = (head_volume((20, 20, 20)) * 10).astype(np.int16)
    p = _write(tmp_path / "s.nii", stored, np.diag([2.0, 2, 2, 1]), slope=((112, "<f"), 0.0), inter=((116, "<f"), 5.0))
    data, _ = load_nifti(p)
    np.testing.assert_array_equal(data, stored.astype(np.float32))


@pytest.mark.parametrize("code, stored", [(1, 0.002), (3, 2000.0), (2, 2.0), (0, 2.0)])
def test_spatial_units_become_millimetres(code, stored, tmp_path):
    """xyzt_units metres (1), micrometres (3), mm (2) or unknown (0, read as mm): 2 mm voxels."""
    p = _write(tmp_path / "u.nii", head_volume((12, 12, 12)), np.diag([stored] * 3 + [1.0]), units=((123, "<B"), code))
    _, affine = load_nifti(p)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), 2.0, rtol=1e-6)


def test_sform_wins_over_a_zero_pixdim(tmp_path):
    """With an sform (and no qform) the grid is the sform's; pixdim is not used to place voxels."""
    p = _write(tmp_path / "z.nii", head_volume((12, 12, 12)), np.diag([3.0, 3, 3, 1]), pd=((88, "<f"), 0.0))
    assert int(nib.load(p).header["qform_code"]) == 0
    _, affine = load_nifti(p, DataConfig())
    np.testing.assert_allclose(np.diag(affine)[:3], 3.0)


def test_qform_sform_within_half_a_voxel_is_fine():
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((10, 10, 10))
    aff = np.diag([2.0, 2, 2, 1])
    hdr.set_qform(aff, code=1)
    shifted = aff.copy()
    shifted[0, 3] = 0.9                                   # under half of a 2 mm voxel
    hdr.set_sform(shifted, code=1)
    assert nifti_header.geometry_problem(hdr, (10, 10, 10)) is None
    shifted[0, 3] = 1.1
    hdr.set_sform(shifted, code=1)
    assert nifti_header.geometry_problem(hdr, (10, 10, 10)).startswith("qform and sform disagree by 1.10 mm")
