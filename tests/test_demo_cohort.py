"""The built-in demo cohort: simulated pathology on real anatomy (MNI ICBM152 2009)."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medcl.data import demo

SPACING = 3.0
N = 6


@pytest.fixture(scope="module")
def tpl() -> demo.Template:
    return demo.load_template(SPACING)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> demo.DemoSources:
    return demo.make_demo_sources(tmp_path_factory.mktemp("demo") / "a", n_subjects=N, seed=0, spacing=SPACING)


def _rows(src: demo.DemoSources) -> list[dict[str, str]]:
    with src.labels_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def _load(src: demo.DemoSources, subject: str) -> nib.Nifti1Image:
    return nib.load(src.nifti_dir / f"sub-{subject}.nii")


def test_template_comes_from_nilearn_package_data(tpl):
    assert (demo.template_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file()
    assert tpl.t1.shape == (66, 78, 63)
    np.testing.assert_allclose(np.diag(tpl.affine)[:3], SPACING)
    ml = tpl.ventricles.sum() * SPACING**3 / 1000
    assert 8 < ml < 40, f"lateral ventricles of an adult template should be ~10-30 mL, got {ml:.1f}"
    assert tpl.csf_level < 0.5 * tpl.wm_level


def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path):
    """Same seed, same voxels, whether one process simulates the cohort (``again``) or one
    forked process per core does (the fixture's ``cohort``, the default)."""
    again = demo.make_demo_sources(tmp_path / "b", n_subjects=N, seed=0, spacing=SPACING, workers=1)
    other = demo.make_demo_sources(tmp_path / "c", n_subjects=N, seed=1, spacing=SPACING)
    for row in _rows(cohort):
        a = np.asarray(_load(cohort, row["subject"]).dataobj)
        b = np.asarray(_load(again, row["subject"]).dataobj)
        c = np.asarray(_load(other, row["subject"]).dataobj)
        assert a.dtype == np.float32
        assert np.array_equal(a, b)
        assert not np.allclose(a, c)
    assert _rows(cohort) == _rows(again)


def test_a_worker_killed_mid_cohort_loses_no_subject(cohort, tmp_path, monkeypatch):
    """A simulation worker that dies (OOM killer, say) breaks the pool: the parent warns and
    simulates what is left itself, and the cohort is the same as ever."""
    import os

    parent, original = os.getpid(), demo.simulate_subject

    def dies_on_subject_2(tpl, label, seed, index):
        if index == 2 and os.getpid() != parent:
            os._exit(1)                           # the forked worker dies without a word
        return original(tpl, label, seed, index)

    monkeypatch.setattr(demo, "simulate_subject", dies_on_subject_2)   # forked workers inherit it
    with pytest.warns(RuntimeWarning, match="simulation worker died"):
        again = demo.make_demo_sources(tmp_path / "k", n_subjects=N, seed=0, spacing=SPACING, workers=2)
    for row in _rows(cohort):
        assert np.array_equal(np.asarray(_load(cohort, row["subject"]).dataobj),
                              np.asarray(_load(again, row["subject"]).dataobj)), row["subject"]


def test_subject_does_not_depend_on_cohort_size(cohort, tpl, tmp_path):
    """Subject i of any cohort is simulate_subject(label, seed, i): no cohort size involved."""
    small = demo.make_demo_sources(tmp_path / "small", n_subjects=3, seed=0, spacing=SPACING)
    big = {r["subject"]: r["label"] for r in _rows(cohort)}
    for i, row in enumerate(_rows(small)):
        data = np.asarray(nib.as_closest_canonical(_load(small, row["subject"])).dataobj)
        assert np.array_equal(data, demo.simulate_subject(tpl, row["label"], 0, i)), row["subject"]
        if big[row["subject"]] == row["label"]:
            assert np.array_equal(np.asarray(_load(small, row["subject"]).dataobj),
                                  np.asarray(_load(cohort, row["subject"]).dataobj))
    assert demo.subject_rngs(3, 2)["noise"].random() != demo.subject_rngs(3, 3)["noise"].random()


@pytest.mark.parametrize("n", [6, 7, 8, 60])
def test_labels_balanced(n):
    labels = demo.balanced_labels(n, seed=0)
    counts = [labels.count(c) for c in demo.CLASSES]
    assert sum(counts) == n and max(counts) - min(counts) <= 1
    assert demo.balanced_labels(n, seed=0) == labels
    if n >= 6:
        assert demo.balanced_labels(n, seed=1) != labels


def test_files_labels_and_readme(cohort):
    rows = _rows(cohort)
    assert list(rows[0]) == ["subject", "label"]
    assert {r["label"] for r in rows} == set(demo.CLASSES)
    assert cohort.counts == {c: 2 for c in demo.CLASSES}
    files = sorted(p.name for p in cohort.nifti_dir.iterdir())
    assert files == sorted(f"sub-{r['subject']}.nii" for r in rows)
    assert rows[0]["subject"] == "demo0001"
    readme = (cohort.labels_csv.parent / "README.txt").read_text(encoding="utf-8")
    assert "simulated pathology on real anatomy" in readme and "not patient data" in readme


def test_las_files_hold_the_same_world_image(cohort, tpl):
    codes = {}
    for i, row in enumerate(_rows(cohort)):
        img = _load(cohort, row["subject"])
        codes[row["subject"]] = nib.aff2axcodes(img.affine)
        canon = nib.as_closest_canonical(img)
        np.testing.assert_allclose(canon.affine, tpl.affine)
        direct = demo.simulate_subject(tpl, row["label"], 0, i)
        assert np.array_equal(np.asarray(canon.dataobj), direct), row["subject"]
    assert ("L", "A", "S") in codes.values() and ("R", "A", "S") in codes.values()
    assert sum(c == ("L", "A", "S") for c in codes.values()) == N // 3


def test_background_near_zero_and_head_inside_fov(cohort):
    img = np.asarray(_load(cohort, "demo0001").dataobj)
    ref = np.percentile(img, 99)
    corner = img[:5, :5, -5:]
    assert corner.mean() < 0.1 * ref
    assert np.isfinite(img).all() and img.min() >= 0


def _shell(tpl) -> np.ndarray:
    return ndimage.binary_dilation(tpl.ventricles, iterations=1)


def _class_means(tpl, label: str, indices, measure) -> float:
    return float(np.mean([measure(demo.edit_anatomy(tpl, label, 0, i)) for i in indices]))


def test_atrophy_darkens_periventricular_region_in_template_space(tpl):
    shell = _shell(tpl)
    measure = lambda v: v[shell].mean()  # noqa: E731
    healthy = _class_means(tpl, "healthy", range(0, 8), measure)
    lesion = _class_means(tpl, "lesion", range(8, 16), measure)
    atrophy = _class_means(tpl, "atrophy", range(16, 24), measure)
    gap = tpl.wm_level - tpl.csf_level
    assert healthy - atrophy > 0.1 * gap, (healthy, atrophy)
    assert abs(healthy - lesion) < 0.05 * gap, (healthy, lesion)


def test_lesions_add_hypointense_wm_voxels_in_template_space(tpl):
    wm = ndimage.binary_erosion(tpl.wm > 0.9)
    cut = tpl.wm_level - 0.3 * (tpl.wm_level - tpl.csf_level)
    measure = lambda v: float((v[wm] < cut).sum())  # noqa: E731
    healthy = _class_means(tpl, "healthy", range(0, 8), measure)
    lesion = _class_means(tpl, "lesion", range(8, 16), measure)
    assert lesion > 10 * max(healthy, 1.0), (healthy, lesion)


def test_shams_are_edits_of_the_same_kind(tpl):
    """Same subject as healthy and as lesion: same lesion sites, only the contrast differs."""
    healthy = demo.edit_anatomy(tpl, "healthy", 0, 5)
    lesion = demo.edit_anatomy(tpl, "lesion", 0, 5)
    no_edit = demo.enlarge_ventricles(tpl.t1, tpl.push, tpl.push_box, SPACING, 0.0)
    assert np.array_equal(no_edit, tpl.t1)
    diff = lesion - healthy
    assert diff.max() <= 1e-6 and diff.min() < -0.2
    changed = np.abs(diff) > 0.02
    assert 0 < changed.mean() < 0.01
    assert tpl.wm[changed].mean() > 0.7


def test_signal_survives_the_nuisance_pipeline(tpl):
    """Identical nuisance, different class: the difference sits where the pathology is."""
    healthy = demo.simulate_subject(tpl, "healthy", 0, 4)
    atrophy = demo.simulate_subject(tpl, "atrophy", 0, 4)
    lesion = demo.simulate_subject(tpl, "lesion", 0, 4)
    shell = _shell(tpl)
    assert atrophy[shell].mean() < 0.93 * healthy[shell].mean()
    darker = (healthy - lesion) > 0.2 * np.percentile(healthy, 99)
    assert darker.sum() >= 5
    assert tpl.wm[darker].mean() > 0.5


def test_nuisance_varies_between_subjects(tpl):
    a = demo.simulate_subject(tpl, "healthy", 0, 0)
    b = demo.simulate_subject(tpl, "healthy", 0, 1)
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert 0.7 < corr < 0.995


def test_ventricle_warp_does_not_fold(tpl):
    k = max(demo.VENTRICLE_MM["atrophy"]) / SPACING
    jac = np.empty((3, 3) + tpl.t1.shape, np.float32)
    for a in range(3):
        for b, g in enumerate(np.gradient(tpl.push[a])):
            jac[a, b] = (a == b) + k * g
    assert np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1))).min() > 0


def test_bad_arguments_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match="n_subjects"):
        demo.make_demo_sources(tmp_path, n_subjects=0)
    with pytest.raises(ValueError, match="spacing"):
        demo.make_demo_sources(tmp_path, spacing=0.5)
    with pytest.raises(ValueError, match="unknown label"):
        demo.sample_pathology("tumour", np.random.default_rng(0))
