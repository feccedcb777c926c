"""Normative deviation maps (medcl.data.normative): the reference against scipy's robust
statistics, ingest fitting it on the train split only, one model input for every consumer
(cohort, both pair-source placements, prediction), and one-line refusals.

Real files: demo subjects simulated on the MNI template, registered and masked by ingest."""

import numpy as np
import pytest
import torch
from scipy.stats import median_abs_deviation

from medcl.config import AugmentConfig, ConfigError, DataConfig
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest, preprocess_file, read_manifest, write_reference
from medcl.data.normative import CLIP, NormativeReference, fit_reference
from medcl.pipelines.pretrain import run_pretrain
from medcl.serving.inference import check_reference, model_input
from medcl.train.batched_pairs import BatchedPairs
from medcl.train.pairs import epoch_batches
from medcl.validate import load_checked

ON = dict(spacing=6.0, register="affine", brain_mask="template", workers=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Eight demo subjects at 6 mm ingested with ``data.normative: pool`` (about half in the test split)."""
    src = make_demo_sources(tmp_path_factory.mktemp("src"), n_subjects=8, spacing=6.0, workers=1)
    out = tmp_path_factory.mktemp("cohort")
    ingest([src.nifti_dir], out, DataConfig(**ON, normative="pool"), labels_csv=src.labels_csv, test_fraction=0.5,
           progress=False)
    return src, out


def test_reference_is_the_voxelwise_median_and_normal_scaled_mad():
    rng = np.random.default_rng(0)
    pool = [rng.gamma(2.0, 1.0, (5, 6, 7)).astype(np.float32) for _ in range(11)]
    masks = [np.ones((5, 6, 7), bool)] * 11
    ref = fit_reference(pool, masks)
    stack = np.stack(pool)
    np.testing.assert_allclose(ref.median, np.median(stack, axis=0), rtol=1e-6)
    mad = median_abs_deviation(stack, axis=0, scale="normal")             # the independent oracle
    floor = 0.5 * np.median(mad)
    np.testing.assert_allclose(ref.scale, np.maximum(mad, floor), rtol=1e-5)
    assert (mad < floor).any() and ref.n_scans == 11                      # the floor was exercised


def test_deviation_map_clips_is_zero_outside_the_mask_and_a_region_is_the_maps_region():
    rng = np.random.default_rng(1)
    ref = fit_reference([rng.normal(1.0, 0.1, (8, 8, 8)).astype(np.float32) for _ in range(5)],
                        [np.ones((8, 8, 8), bool)] * 5)
    scan = rng.normal(1.0, 0.1, (8, 8, 8)).astype(np.float32)
    scan[2, 2, 2] = -50.0                                                   # far below the pool
    mask = np.ones((8, 8, 8), bool)
    mask[0] = False
    z = ref.apply(scan, mask)
    assert z[2, 2, 2] == -CLIP and np.all(z[0] == 0) and np.abs(z).max() <= CLIP
    np.testing.assert_allclose(z[1:], np.clip((scan[1:] - ref.median[1:]) / ref.scale[1:], -CLIP, CLIP), rtol=1e-6)
    region = (slice(1, 6), slice(2, 8), slice(0, 3))
    assert np.array_equal(ref.apply(scan[region], mask[region], region), z[region])
    with pytest.raises(ValueError, match=r"^scan-x: grid \(7, 8, 8\) is not the normative reference's"):
        ref.apply(scan[1:], mask[1:], source="scan-x")


def test_ingest_fits_the_reference_on_the_train_split_alone_and_the_cohort_serves_deviation_maps(demo, tmp_path):
    _, out = demo
    cohort = Cohort.load(out)
    train = cohort.select(split="train")
    n = len(train)
    assert 2 <= n < len(cohort) == 8 and cohort.reference is not None
    expected = fit_reference([train.intensity(i) for i in range(n)], [train.mask(i) for i in range(n)])
    assert cohort.reference.sha256 == expected.sha256 and cohort.reference.n_scans == n
    every = fit_reference([cohort.intensity(i) for i in range(8)], [cohort.mask(i) for i in range(8)])
    assert every.sha256 != expected.sha256                                  # so the test split did matter
    for i in range(len(cohort)):
        np.testing.assert_array_equal(cohort.image(i), expected.apply(cohort.intensity(i), cohort.mask(i)))
        assert not np.array_equal(cohort.image(i), cohort.intensity(i))
    test = cohort.select(split="test")
    assert test.reference is cohort.reference and test.with_rows(test.rows[:1]).reference is cohort.reference
    saved = NormativeReference.load(out / "normative.npz")
    assert saved.sha256 == cohort.reference.sha256
    (tmp_path / "bad.npz").write_bytes(b"not a reference")
    with pytest.raises(ValueError, match=r"bad\.npz: not a normative reference"):
        NormativeReference.load(tmp_path / "bad.npz")


def test_reingesting_without_it_removes_the_reference(demo, tmp_path):
    src, _ = demo
    out = tmp_path / "c"
    ingest([src.nifti_dir], out, DataConfig(**ON, normative="pool"), labels_csv=src.labels_csv, test_fraction=0.5,
           progress=False)
    first = (out / "normative.npz").stat().st_mtime_ns
    again = ingest([src.nifti_dir], out, DataConfig(**ON, normative="pool"), labels_csv=src.labels_csv,
                   test_fraction=0.5, progress=False)
    assert again.skipped_cached == 8 and (out / "normative.npz").stat().st_mtime_ns == first   # same pool: kept
    rows = read_manifest(out)
    moved = next(r for r in rows if r["split"] == "test")
    moved["split"] = "train"                                  # the pool changes: fitted again, with that scan
    write_reference(out, rows, DataConfig(**ON, normative="pool"))
    assert Cohort.load(out).reference.n_scans == sum(r["split"] == "train" for r in rows)
    res = ingest([src.nifti_dir], out, DataConfig(**ON), labels_csv=src.labels_csv, test_fraction=0.5, progress=False)
    assert res.skipped_cached == 8                      # the scans themselves are unchanged by the option
    cohort = Cohort.load(out)
    assert cohort.reference is None and np.array_equal(cohort.image(0), cohort.intensity(0))


def test_both_pair_source_placements_train_on_the_same_deviation_maps(demo):
    cohort = Cohort.load(demo[1]).select(split="train")
    cfg = AugmentConfig(view_size=12)
    shards = epoch_batches(len(cohort), 2, seed=0, epoch=0)
    runs = []
    for placement in ("host", "stream"):
        pairs = BatchedPairs.from_cohort(cohort, cfg, placement=placement)
        assert pairs.placement == placement
        runs.append([(v1.clone(), v2.clone()) for v1, v2, _ in pairs.batches(shards, 0)])
        pairs.close()
    for (a1, a2), (b1, b2) in zip(*runs):
        assert torch.allclose(a1, b1, atol=1e-4) and torch.allclose(a2, b2, atol=1e-4)
    plain = BatchedPairs.from_cohort(Cohort(cohort.root, cohort.rows), cfg, placement="host")   # no reference
    (p1, _, _), *_ = list(plain.batches(shards, 0))
    plain.close()
    assert not torch.allclose(p1, runs[0][0][0], atol=1e-2)                 # so the maps, not the images, were used


def test_prediction_makes_the_same_map_as_the_cohort(demo):
    src, out = demo
    cohort = Cohort.load(out)
    cfg = DataConfig(**ON, normative="pool")
    path = sorted(src.nifti_dir.glob("*.nii"))[0]
    pre = preprocess_file(path, cfg)
    i = int(np.argmin([np.abs(cohort.intensity(j) - pre.image).mean() for j in range(len(cohort))]))
    np.testing.assert_allclose(model_input(pre, cohort.reference), cohort.image(i), atol=0.05)   # fp16 cache
    assert model_input(pre, None) is pre.image


def test_a_model_and_its_reference_must_match_in_one_line(demo):
    ref = Cohort.load(demo[1]).reference
    meta = {"data": {"normative": "pool"}, "normative_sha256": ref.sha256}
    check_reference(meta, ref, "here")
    with pytest.raises(ValueError, match=r"^here: the model's data.normative is pool \(deviation maps\) but no"):
        check_reference(meta, None, "here")
    with pytest.raises(ValueError, match=r"^here: the cohort has a normative reference but the model's data.normative"):
        check_reference({"data": {"normative": "none"}}, ref, "here")
    other = NormativeReference(ref.median + 1, ref.scale, ref.n_scans)
    with pytest.raises(ValueError, match=r"^here: the normative reference differs"):
        check_reference(meta, other, "here")


@pytest.mark.parametrize("override, named", [
    (["data.normative=mean"], "data.normative"),
    (["data.normative=pool", "data.register=affine"], "pool with data.brain_mask: template")])
def test_bad_settings_are_one_line_errors(override, named):
    with pytest.raises(ConfigError, match=named) as err:
        load_checked(overrides=override)
    assert "\n" not in str(err.value)


def test_pretraining_refuses_a_cohort_made_otherwise_before_it_trains(demo, tmp_path):
    cfg = load_checked(overrides=["data.register=affine", "data.brain_mask=template"])      # data.normative none
    with pytest.raises(ValueError, match=r"cohort\w*: the cohort has a normative reference"):
        run_pretrain(cfg, demo[1], tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    assert not (tmp_path / "out" / "pretrain").exists()
