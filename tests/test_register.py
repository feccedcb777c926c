"""Registration to the MNI template (medcl.data.register) and its place in preprocess and ingest.

Real files only: the ICBM152 template that nilearn ships, moved by a known transform, and
demo scans simulated on it (medcl.data.demo)."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medcl.config import ConfigError, DataConfig, load_config
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest, prep_sha256, preprocess, preprocess_file
from medcl.data.readers import load_nifti
from medcl.data.register import KINDS, register, template_grid

CENTRE = np.array([0.0, -18.0, 18.0])   # MNI mm, near the middle of the brain
CUBE = np.array([[x, y, z] for x in (-15, 15) for y in (-15, 15) for z in (-15, 15)], float) + CENTRE


def _rotation(axis: int, deg: float) -> np.ndarray:
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _moved_template(rot: np.ndarray, scale: float, shift_mm, spacing: float = 2.0, pad: int = 8):
    """The template T1 moved by x_scan = scale * rot (x - CENTRE) + CENTRE + shift, on its own
    grid padded by ``pad`` voxels: (array, affine, template -> scan 4x4)."""
    grid = template_grid(spacing)
    move = np.eye(4)
    move[:3, :3] = scale * rot
    move[:3, 3] = CENTRE + np.asarray(shift_mm) - scale * rot @ CENTRE
    affine = grid.affine.copy()
    affine[:3, 3] -= pad * spacing
    shape = tuple(n + 2 * pad for n in grid.shape)
    vox = np.linalg.inv(grid.affine) @ np.linalg.inv(move) @ affine   # scan voxel -> template voxel
    data = ndimage.affine_transform(grid.t1 * 800.0, vox[:3, :3], vox[:3, 3], output_shape=shape, order=1)
    return data.astype(np.float32), affine, move


def _angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def _polar_rotation(a: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def test_affine_recovers_a_known_rotation_and_scale():
    rot = _rotation(0, 8.0) @ _rotation(2, -6.0)
    data, affine, move = _moved_template(rot, 1.08, (4.0, -3.0, 5.0))
    reg = register(data, affine, "affine", spacing=2.0)
    landmarks_in_scan = (move @ np.c_[CUBE, np.ones(8)].T)
    back = (reg.transform @ landmarks_in_scan)[:3].T
    assert np.linalg.norm(back - CUBE, axis=1).max() < 1.0
    a = reg.transform[:3, :3]                       # scan -> template: the inverse of the move
    assert _angle_deg(_polar_rotation(a) @ rot) <= 1.0
    assert abs(np.linalg.det(a) ** (-1 / 3) - 1.08) < 0.01
    assert reg.image.shape == template_grid(2.0).shape


def test_rigid_recovers_a_known_rotation():
    rot = _rotation(1, 7.0) @ _rotation(2, 5.0)
    data, affine, move = _moved_template(rot, 1.0, (-5.0, 2.0, 3.0))
    reg = register(data, affine, "rigid", spacing=2.0)
    back = (reg.transform @ move @ np.c_[CUBE, np.ones(8)].T)[:3].T
    assert np.linalg.norm(back - CUBE, axis=1).max() < 1.0
    assert _angle_deg(reg.transform[:3, :3] @ rot) <= 1.0
    assert np.allclose(reg.transform[:3, :3] @ reg.transform[:3, :3].T, np.eye(3), atol=1e-6)   # no scale


@pytest.fixture(scope="module")
def demo_scans(tmp_path_factory):
    """Three simulated demo subjects at 4 mm (one of them written LAS)."""
    src = make_demo_sources(tmp_path_factory.mktemp("demo"), n_subjects=3, spacing=4.0, workers=1)
    return sorted(src.nifti_dir.glob("*.nii"))


def test_preprocess_registers_and_masks_with_the_template(demo_scans):
    cfg = DataConfig(spacing=4.0, register="affine", brain_mask="template")
    grid = template_grid(4.0)
    idx = np.argwhere(grid.brain)
    lo = np.maximum(idx.min(0) - cfg.crop_margin, 0)
    hi = np.minimum(idx.max(0) + 1 + cfg.crop_margin, grid.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    for path in demo_scans:
        pre = preprocess_file(path, cfg)
        assert pre.image.shape == tuple(hi - lo)               # the same shape for every scan
        assert np.array_equal(pre.mask, grid.brain[box])         # the template's brain, nothing else
        inside = pre.image[pre.mask]
        assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3
        # aligned: the registered scan correlates with the template inside the brain
        assert np.corrcoef(inside, grid.t1[box][pre.mask])[0, 1] > 0.8
        assert 0.9 < np.linalg.det(pre.transform[:3, :3]) ** (1 / 3) < 1.1   # demo heads: +-6% in size


@pytest.mark.parametrize("kind", KINDS)
def test_preprocess_file_and_preprocess_give_the_same_output(demo_scans, kind):
    cfg = DataConfig(spacing=4.0, register=kind)
    a = preprocess_file(demo_scans[1], cfg)
    data, affine = load_nifti(demo_scans[1], cfg)
    b = preprocess(data, affine, cfg)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.transform, b.transform)
    assert not np.allclose(a.transform, np.eye(4))


def test_a_las_file_registers_like_its_ras_copy(demo_scans, tmp_path):
    cfg = DataConfig(spacing=4.0, register="affine")
    img = nib.load(demo_scans[0])
    data, affine = np.asarray(img.dataobj, np.float32), img.affine
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), affine @ flip), str(tmp_path / "las.nii.gz"))
    a, b = preprocess_file(demo_scans[0], cfg), preprocess_file(tmp_path / "las.nii.gz", cfg)
    assert np.allclose(a.transform, b.transform, atol=1e-6)
    assert np.allclose(a.image, b.image, atol=1e-4)


@pytest.mark.parametrize("override,named", [
    ("data.register=bogus", "data.register"),
    ("data.brain_mask=skullstrip", "data.brain_mask"),
    ("data.brain_mask=template", "data.brain_mask"),     # needs registration
])
def test_bad_registration_settings_are_one_line_errors(override, named):
    with pytest.raises(ConfigError, match=named) as exc:
        load_config(None, [override])
    assert "\n" not in str(exc.value)


def test_config_accepts_every_kind_the_registration_knows():
    for kind in KINDS:
        assert load_config(None, [f"data.register={kind}", "data.brain_mask=template"]).data.register == kind


def test_cache_hash_unchanged_when_off_and_transform_stored_when_on(demo_scans, tmp_path):
    # the hash of a default config is the one computed before these keys existed (cohorts stay valid)
    assert prep_sha256(DataConfig()) == "2b91ecda461893c3"
    assert prep_sha256(DataConfig(spacing=4.0)) == "8b0c2b5cc7f71e3c"
    src = demo_scans[0].parent
    on = DataConfig(spacing=4.0, register="affine", workers=1)
    assert prep_sha256(on) != prep_sha256(DataConfig(spacing=4.0))
    res = ingest([src], tmp_path / "c", on, progress=False)
    assert res.ingested == 3
    cohort = Cohort.load(tmp_path / "c")
    direct = preprocess_file(demo_scans[0], on)
    transforms = [cohort.transform(i) for i in range(len(cohort))]
    assert any(np.array_equal(t, direct.transform) for t in transforms)
    assert ingest([src], tmp_path / "c", on, progress=False).skipped_cached == 3
    off = ingest([src], tmp_path / "c", DataConfig(spacing=4.0, workers=1), progress=False)
    assert off.ingested == 3                                    # the settings changed: converted again
    cohort = Cohort.load(tmp_path / "c")
    assert all(np.array_equal(cohort.transform(i), np.eye(4)) for i in range(len(cohort)))   # no stale file
