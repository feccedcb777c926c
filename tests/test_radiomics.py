"""The radiomics baseline (medcl.fewshot.radiomics) against known values on a phantom, against
MIRP called directly, and its errors and standardisation.

The phantom: an n x n x n cube mask (n = 8) at spacing s mm, its lower half (first axis) at
intensity 10 and its upper half at 30. By hand, in voxel units (centres at integers, the
marching-cubes mesh at the 0.5 iso-level, as IBSI defines it): the mesh is the cube with its
edges and corners chamfered, so

    volume  = (n-1)^3 + 3 (n-1)^2 + 1.5 (n-1) + 1/6        (n = 1: the octahedron, 1/6)
    area    = 6 (n-1)^2 + 12 (n-1) / sqrt(2) + sqrt(3)      (n = 1: sqrt(3))
    diameter between the farthest vertices (-0.5, 0, 0) and (n-0.5, n-1, n-1)

times s^3, s^2 and s; the voxel-count volume is n^3 s^3. First-order statistics are numpy's on
the masked voxels (IBSI variance: population). With 32 fixed bins, 10 and 30 fall in grey
levels 1 and 32; the size-zone matrix has two 3D zones of n^3/2 voxels (zone percentage 2/n^3,
grey-level variance 31^2/4); GLCM contrast (13 directions merged, distance 1) is 31^2 times the
fraction of neighbouring pairs inside the mask that cross the halves, counted here directly.
"""

from __future__ import annotations

import itertools
import logging

import mirp
import numpy as np
import pytest

from medcl.config import FewShotConfig
from medcl.data.cohort import Cohort
from medcl.fewshot.radiomics import FAMILIES, RadiomicsError, mirp_settings, radiomics_features, standardise
from medcl.fewshot.suite import radiomics_fit_cohort

N, PAD = 8, 2
WITH_SHAPE = FAMILIES + ("morphology",)


def phantom() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((N + 2 * PAD,) * 3, np.float32)
    mask = np.zeros(img.shape, bool)
    mask[PAD:PAD + N, PAD:PAD + N, PAD:PAD + N] = True
    img[:PAD + N // 2], img[PAD + N // 2:] = 10.0, 30.0
    return img, mask


def crossing_fraction(levels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of neighbouring voxel pairs (13 directions, both in the mask) of unequal level."""
    pairs = crossing = 0
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]
    assert len(offsets) == 13
    for d in offsets:
        a = tuple(slice(max(0, -k), mask.shape[i] - max(0, k)) for i, k in enumerate(d))
        b = tuple(slice(max(0, k), mask.shape[i] - max(0, -k)) for i, k in enumerate(d))
        both = mask[a] & mask[b]
        pairs += int(both.sum())
        crossing += int((both & (levels[a] != levels[b])).sum())
    return crossing / pairs


@pytest.fixture(scope="module")
def features_2mm() -> dict[str, float]:
    img, mask = phantom()
    X, names = radiomics_features([img], [mask], spacing=2.0, families=WITH_SHAPE)
    assert X.shape == (1, len(names)) and len(set(names)) == len(names)
    return dict(zip(names, X[0]))


def test_phantom_shape_features_match_the_hand_computed_mesh(features_2mm):
    s, m = 2.0, N - 1
    volume = (m ** 3 + 3 * m ** 2 + 1.5 * m + 1 / 6) * s ** 3
    area = (6 * m ** 2 + 12 * m / np.sqrt(2) + np.sqrt(3)) * s ** 2
    f = features_2mm
    assert f["morph_volume"] == pytest.approx(volume, rel=1e-9)
    assert f["morph_vol_approx"] == pytest.approx(N ** 3 * s ** 3, rel=1e-12)
    assert f["morph_area_mesh"] == pytest.approx(area, rel=1e-9)
    assert f["morph_av"] == pytest.approx(area / volume, rel=1e-9)
    assert f["morph_sphericity"] == pytest.approx((36 * np.pi * volume ** 2) ** (1 / 3) / area, rel=1e-9)
    assert f["morph_diam"] == pytest.approx(s * np.sqrt(N ** 2 + 2 * m ** 2), rel=1e-9)


def test_phantom_first_order_features_match_numpy(features_2mm):
    img, mask = phantom()
    v = img[mask].astype(np.float64)
    f = features_2mm
    for name, value in {"stat_mean": v.mean(), "stat_var": v.var(), "stat_min": v.min(), "stat_max": v.max(),
                        "stat_median": np.median(v), "stat_energy": (v ** 2).sum(),
                        "stat_rms": np.sqrt((v ** 2).mean()), "stat_skew": 0.0}.items():
        assert f[name] == pytest.approx(value, rel=1e-7, abs=1e-12), name    # MIRP sums in float32
    assert (f["stat_mean"], f["stat_var"]) == (20.0, 100.0)


def test_phantom_texture_features_match_the_hand_counts(features_2mm):
    img, mask = phantom()
    levels = np.where(img > 20, 32, 1)
    f = features_2mm
    assert f["szm_z_perc_3d_fbn_n32"] == pytest.approx(2 / N ** 3, rel=1e-12)
    assert f["szm_gl_var_3d_fbn_n32"] == pytest.approx(31 ** 2 / 4, rel=1e-12)
    assert f["szm_lze_3d_fbn_n32"] == pytest.approx((N ** 3 / 2) ** 2, rel=1e-12)
    assert f["ih_entropy_fbn_n32"] == pytest.approx(1.0, rel=1e-12)            # two equal bins: 1 bit
    contrast = 31 ** 2 * crossing_fraction(levels, mask)
    assert f["cm_contrast_d1_3d_v_mrg_fbn_n32"] == pytest.approx(contrast, rel=1e-9)


def test_wrapper_returns_what_mirp_returns_directly():
    """Numpy arrays given to MIRP are taken as 1 mm voxels: at spacing 1 the wrapper (which
    goes through NIfTI files) must give the same numbers as MIRP on the arrays, every feature."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(14, 15, 13)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[3:11, 2:12, 3:10] = True
    mask[5:8, 5:9, 1:3] = True
    X, names = radiomics_features([img], [mask], spacing=1.0, families=WITH_SHAPE)
    logging.disable(logging.INFO)
    try:
        table = mirp.extract_features(image=img, mask=mask.astype(np.uint8), **mirp_settings(WITH_SHAPE))[0]
    finally:
        logging.disable(logging.NOTSET)
    direct = np.array([float(table.iloc[0][n]) for n in names])
    assert len(names) > 90 and np.isfinite(direct).sum() > 90
    np.testing.assert_allclose(X[0], direct, rtol=1e-6, atol=1e-9, equal_nan=True)


def test_features_other_than_shape_do_not_depend_on_the_spacing():
    img, mask = phantom()
    X1, names = radiomics_features([img], [mask], spacing=1.0)
    X3, names3 = radiomics_features([img], [mask], spacing=3.0)
    assert names == names3 and "morph_volume" not in names       # morphology only when asked for
    np.testing.assert_allclose(X3, X1, rtol=1e-9)                  # intensity and texture: no unit of length


@pytest.mark.slow
def test_two_worker_processes_give_the_same_rows_in_the_same_order():
    """Spawned workers import medcl (and torch) first: tens of seconds on a loaded machine."""
    img, mask = phantom()
    images = [img, np.roll(img, 1, axis=0), np.roll(img, 2, axis=0)]    # the boundary moves
    X1, names = radiomics_features(images, [mask] * 3, spacing=2.0)
    X2, names2 = radiomics_features(images, [mask] * 3, spacing=2.0, workers=2)
    assert names == names2 and not np.array_equal(X1[0], X1[2])
    np.testing.assert_array_equal(X1, X2)


@pytest.mark.parametrize("bad", ["empty", "shape"])
def test_a_bad_mask_is_a_one_line_error_naming_the_scan(bad):
    img, mask = phantom()
    wrong = np.zeros_like(mask) if bad == "empty" else mask[:-1]
    with pytest.raises(RadiomicsError) as info:
        radiomics_features([img, img], [mask, wrong], spacing=2.0, keys=["scan-aa", "scan-bb"])
    message = str(info.value)
    assert "\n" not in message and "scan scan-bb" in message and "scan-aa" not in message
    assert ("empty" in message) if bad == "empty" else ("same 3D shape" in message)
    with pytest.raises(RadiomicsError, match=r"^radiomics: scan 1: "):   # default key: the index
        radiomics_features([img, img], [mask, wrong], spacing=2.0)


def test_standardise_drops_non_finite_and_constant_columns_fitted_on_fit_only():
    rng = np.random.default_rng(1)
    fit = np.column_stack([rng.normal(5, 2, 50), np.full(50, 3.0), rng.normal(size=50), rng.normal(size=50)])
    fit[7, 2] = np.nan                                               # not finite on fit: dropped
    apply = np.column_stack([rng.normal(5, 2, 9), rng.normal(size=9), rng.normal(size=9), rng.normal(size=9)])
    apply[0, 3] = np.inf
    z = standardise(fit, apply)
    assert z.shape == (9, 2)
    np.testing.assert_allclose(z[:, 0], (apply[:, 0] - fit[:, 0].mean()) / fit[:, 0].std())
    assert z[0, 1] == 0.0 and np.isfinite(z).all()
    np.testing.assert_allclose(standardise(fit, fit)[:, 0].std(), 1.0)
    with pytest.raises(ValueError, match="columns"):
        standardise(fit, apply[:, :3])


def test_radiomics_fit_cohort_is_the_first_n_train_scans_never_a_test_scan(tmp_path):
    """``fewshot.radiomics_fit_scans``: the z-scoring reference is a label-blind prefix of the
    train split in manifest order; 0 (the default) or more than there are: the whole split."""
    rows = [{"scan_key": f"scan-{i:02d}", "split": "test" if i % 3 == 0 else "train",
             "label": "ab"[i % 2]} for i in range(12)]
    cohort = Cohort(tmp_path, rows)
    train_keys = [r["scan_key"] for r in rows if r["split"] == "train"]

    def keys(n: int) -> list[str]:
        return [r["scan_key"] for r in radiomics_fit_cohort(FewShotConfig(radiomics_fit_scans=n), cohort).rows]

    assert keys(0) == train_keys and keys(100) == train_keys
    assert keys(3) == train_keys[:3]
