"""Built-in demo cohort: simulated pathology on real anatomy — not patient data.

Every subject starts from the MNI ICBM152 2009a nonlinear symmetric template (T1 and GM/WM
probability maps, 1 mm) that nilearn ships in ``nilearn/datasets/data/``; nothing is
downloaded. Template copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University; its notice permits use, copying,
modification and distribution without fee provided the copyright notice appears in all
copies, and comes without warranty (Fonov et al., NeuroImage 2009 and 2011). nilearn's own
description lists the licence as "unknown" and redistributes the converted files; we only
read them from the installed package and never copy them into this repository.

Pathology (the diagnostic signal), applied in template space:

* ``lesion``: 4-10 soft-edged, T1-hypointense white-matter lesions of radius 4-9 mm.
* ``atrophy``: lateral ventricles pushed outward by a smooth field, outer cortex thinned
  towards CSF intensity (which also widens sulci).
* every class gets every edit; the edits that do not define its class are shams with
  near-zero or healthy-range magnitudes, so the presence of an edit gives nothing away.

Where the lesions are: :func:`lesion_mask` recomputes a subject's lesion mask from ``(seed,
index)`` on the grid of its simulated scan file (same pose, warp and LAS flip), without
touching the scans, so saliency can be checked against the truth (:mod:`medcl.fewshot.lesions`).

Nuisance (what a contrastive model should ignore): smooth deformation, head-size scaling,
rigid pose, gamma/gain, multiplicative bias field and Rician noise. About a third of the
files are written LAS instead of RAS, with the same world coordinates.

Example::

    >>> src = make_demo_sources(Path("/tmp/demo"), n_subjects=6, spacing=3.0)  # doctest: +SKIP
    >>> src.counts                                                              # doctest: +SKIP
    {'healthy': 2, 'lesion': 2, 'atrophy': 2}
"""
from __future__ import annotations

import csv
import functools
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.special import erfc
from tqdm import tqdm

CLASSES = ("healthy", "lesion", "atrophy")
README_TEXT = (
    "medcl demo cohort: simulated pathology on real anatomy (MNI ICBM152 2009 template) "
    "— not patient data.\n"
    "Template (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University.\n"
    "Classes: healthy, lesion (T1-hypointense white-matter lesions), atrophy (enlarged "
    "ventricles, thinner cortex). Labels are in labels.csv (subject,label).\n"
)

# Per-class magnitude ranges (uniform). Sham ranges overlap the healthy range on purpose.
LESION_CONTRAST = {"lesion": (0.6, 0.95), "sham": (0.0, 0.05)}
VENTRICLE_MM = {"atrophy": (2.0, 4.5), "sham": (-1.0, 1.5)}
CORTEX_THINNING = {"atrophy": (0.3, 0.6), "sham": (0.0, 0.15)}
LAS_EVERY = 3  # subjects with index % LAS_EVERY == 1 are written LAS

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_VENTRICLE_CENTRE_MM = np.array([0.0, -12.0, 14.0])  # MNI, between the lateral ventricles
_VENTRICLE_RADII_MM = np.array([28.0, 42.0, 24.0])
_DEEP_GM_CENTRE_MM = np.array([0.0, -5.0, 3.0])  # basal ganglia and thalami: not cortex
_DEEP_GM_RADII_MM = np.array([30.0, 38.0, 24.0])


@dataclass(frozen=True)
class DemoSources:
    nifti_dir: Path  # one NIfTI per subject: sub-demo0001.nii ...
    labels_csv: Path  # columns: subject,label  (subject = "demo0001" ...)
    counts: dict[str, int]  # label -> number of subjects


@dataclass(frozen=True, eq=False)
class Template:
    """The ICBM152 template resampled to ``spacing`` mm, with derived maps (RAS grid)."""

    t1: np.ndarray  # float32, 0..1
    gm: np.ndarray  # float32 probability
    wm: np.ndarray  # float32 probability
    brain: np.ndarray  # bool
    ventricles: np.ndarray  # bool
    push: np.ndarray  # (3, X, Y, Z) float32, unit field pointing into the ventricles
    push_box: tuple[slice, slice, slice]  # where ``push`` is non-negligible
    outer_gm: np.ndarray  # float32 0..1, weight of the outer cortical layer
    csf_level: float
    wm_level: float
    affine: np.ndarray
    spacing: float


@dataclass(frozen=True)
class Pathology:
    """Magnitudes of the three edits for one subject."""

    lesion_contrast: float  # 0 = invisible, 1 = lesion core at CSF intensity
    ventricle_mm: float  # outward push at the ventricle wall; negative shrinks
    cortex_thinning: float  # fraction of the outer GM layer turned to CSF


def template_dir() -> Path:
    """Folder of the ICBM152 files inside the installed nilearn package."""
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def _resample(vol: np.ndarray, spacing: float) -> np.ndarray:
    """1 mm -> ``spacing`` mm on the same origin (anti-aliased, linear)."""
    if spacing > 1.0:
        vol = ndimage.gaussian_filter(vol, (spacing - 1.0) / 2.0)
    shape = tuple(int((n - 1) // spacing) + 1 for n in vol.shape)
    return ndimage.affine_transform(vol, np.full(3, spacing), output_shape=shape, order=1)


def _world_grid(shape: tuple[int, ...], affine: np.ndarray) -> list[np.ndarray]:
    """Broadcastable world coordinates of an axis-aligned grid."""
    return [
        (affine[a, a] * np.arange(n) + affine[a, 3]).reshape([-1 if b == a else 1 for b in range(3)])
        for a, n in enumerate(shape)
    ]


def _ventricle_mask(t1, gm, wm, brain, affine) -> np.ndarray:
    """Dark CSF voxels (brain minus GM minus WM) inside an ellipsoid at the brain centre."""
    x, y, z = _world_grid(t1.shape, affine)
    c, r = _VENTRICLE_CENTRE_MM, _VENTRICLE_RADII_MM
    near = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1.0
    csf = brain & ((gm + wm < 0.35) | (t1 < 0.45)) & near
    lab, n = ndimage.label(csf)
    if n == 0:
        raise RuntimeError("demo template: no ventricle voxels found")
    sizes = ndimage.sum(csf, lab, index=np.arange(1, n + 1))
    keep = np.arange(1, n + 1)[sizes >= 0.1 * sizes.max()]
    return np.isin(lab, keep)


def _push_field(ventricles: np.ndarray, spacing: float, sigma_mm: float = 6.0):
    """Unit-peak gradient of the blurred ventricle mask and its bounding box."""
    smooth = ndimage.gaussian_filter(ventricles.astype(np.float32), sigma_mm / spacing)
    grad = np.stack(np.gradient(smooth)).astype(np.float32)
    grad /= np.sqrt((grad**2).sum(0)).max()
    idx = np.argwhere(np.sqrt((grad**2).sum(0)) > 0.01)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    return grad, box


def _outer_gm(gm, wm, brain, affine, spacing: float) -> np.ndarray:
    """Cortical GM away from WM (pial side, sulcal banks), outside the deep-GM ellipsoid, peak 1."""
    near_wm = ndimage.gaussian_filter((wm > 0.5).astype(np.float32), 1.5 / spacing)
    x, y, z = _world_grid(gm.shape, affine)
    c, r = _DEEP_GM_CENTRE_MM, _DEEP_GM_RADII_MM
    deep = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
    w = gm * np.clip(1.0 - near_wm / 0.4, 0.0, 1.0) * brain * np.clip(deep - 1.0, 0.0, 1.0)
    return np.clip(w / np.percentile(w[w > 0.01], 95), 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_template(spacing: float = 2.0) -> Template:
    """Read the template from nilearn's package data and resample it (cached in memory)."""
    folder = template_dir()
    imgs = {k: nib.load(folder / _TEMPLATE.format(k)) for k in ("t1", "gm", "wm")}
    vols = {k: _resample(np.asarray(im.dataobj, dtype=np.float32) / 255.0, spacing)
            for k, im in imgs.items()}
    t1, gm, wm = vols["t1"], np.clip(vols["gm"], 0, 1), np.clip(vols["wm"], 0, 1)
    affine = imgs["t1"].affine.copy()
    affine[:3, :3] *= spacing
    brain = ndimage.binary_fill_holes(t1 > 0.05)
    ventricles = _ventricle_mask(t1, gm, wm, brain, affine)
    push, box = _push_field(ventricles, spacing)
    return Template(
        t1=t1, gm=gm, wm=wm, brain=brain, ventricles=ventricles, push=push, push_box=box,
        outer_gm=_outer_gm(gm, wm, brain, affine, spacing),
        csf_level=float(np.median(t1[ventricles])), wm_level=float(np.median(t1[wm > 0.9])),
        affine=affine, spacing=float(spacing),
    )


# ---------------------------------------------------------------- random smooth fields


def _dct_field(shape: tuple[int, ...], coefs: np.ndarray) -> np.ndarray:
    """Separable low-frequency cosine field: sum_ijk coefs[i,j,k] B_i(x) B_j(y) B_k(z)."""
    bases = [np.cos(np.pi * np.arange(coefs.shape[a])[None, :] * (np.arange(n)[:, None] + 0.5) / n)
             for a, n in enumerate(shape)]
    out = np.tensordot(bases[0], coefs, axes=(1, 0))  # (X, j, k)
    out = np.tensordot(out, bases[1], axes=(1, 1))  # (X, k, Y)
    out = np.tensordot(out, bases[2], axes=(1, 1))  # (X, Y, Z)
    return out.astype(np.float32)


def smooth_field(shape, rng: np.random.Generator, amplitude: float, order: int = 3) -> np.ndarray:
    """Random smooth zero-mean field with max |value| == ``amplitude``."""
    k = np.arange(order + 1)
    coefs = rng.standard_normal((order + 1,) * 3) / (1.0 + k[:, None, None] + k[None, :, None] + k[None, None, :])
    coefs[0, 0, 0] = 0.0
    field = _dct_field(shape, coefs)
    return field * np.float32(amplitude / max(float(np.abs(field).max()), 1e-12))


# ---------------------------------------------------------------- pathology edits


def sample_pathology(label: str, rng: np.random.Generator) -> Pathology:
    """Edit magnitudes for ``label``; the number of draws does not depend on the label."""
    if label not in CLASSES:
        raise ValueError(f"demo cohort: unknown label {label!r}; expected one of {CLASSES}")
    u = rng.random(3)
    lesion = LESION_CONTRAST["lesion" if label == "lesion" else "sham"]
    ventricle = VENTRICLE_MM["atrophy" if label == "atrophy" else "sham"]
    cortex = CORTEX_THINNING["atrophy" if label == "atrophy" else "sham"]
    return Pathology(*(float(lo + t * (hi - lo)) for (lo, hi), t in zip((lesion, ventricle, cortex), u)))


def add_lesions(t1, wm, csf_level: float, spacing: float, contrast: float,
                rng: np.random.Generator) -> np.ndarray:
    """4-10 soft ellipsoidal lesions of radius 4-9 mm centred in deep WM, pulled to CSF intensity."""
    out = t1.copy()
    deep = np.argwhere(ndimage.binary_erosion(wm > 0.9, iterations=max(1, round(3.0 / spacing))))
    for _ in range(int(rng.integers(4, 11))):
        centre = deep[rng.integers(len(deep))]
        radii = rng.uniform(4.0, 9.0) * rng.uniform(0.75, 1.25, size=3) / spacing  # voxels
        half = np.ceil(radii + 3.0 / spacing).astype(int)
        box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, t1.shape))
        x, y, z = np.ogrid[box]
        d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip((x, y, z), centre, radii)))
        w = 0.5 * erfc((d - 1.0) * radii.mean() * spacing / np.sqrt(2.0))  # edge: Gaussian, sigma 1 mm
        w *= np.clip(wm[box] / 0.5, 0.0, 1.0)
        out[box] += contrast * w.astype(np.float32) * np.minimum(csf_level - out[box], 0.0)  # only darkens
    return out


def enlarge_ventricles(t1, push, box, spacing: float, mm: float) -> np.ndarray:
    """Warp tissue radially away from the ventricles by ``mm`` at the wall (negative shrinks)."""
    out = t1.copy()
    grid = np.mgrid[box].astype(np.float32)
    coords = grid + np.float32(mm / spacing) * push[(slice(None), *box)]
    out[box] = ndimage.map_coordinates(t1, coords, order=1, mode="nearest", prefilter=False)
    return out


def thin_cortex(t1, outer_gm, csf_level: float, strength: float,
                rng: np.random.Generator) -> np.ndarray:
    """Replace a patchy fraction of the outer GM layer by CSF intensity (thinner cortex, wider sulci)."""
    patches = 0.7 + smooth_field(t1.shape, rng, 0.3, order=3)  # 0.4 .. 1.0
    w = np.clip(strength * patches * outer_gm, 0.0, 1.0)
    return t1 + w * (csf_level - t1)


# ---------------------------------------------------------------- nuisance


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def deform(vol, centre_vox, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Head scaling (±6%), rotation (±6°), translation (±6 mm) and a smooth 1-3 mm warp."""
    scale = rng.uniform(0.94, 1.06)
    rot = _rotation(np.deg2rad(rng.uniform(-6.0, 6.0, size=3)))
    shift = rng.uniform(-6.0, 6.0, size=3) / spacing
    warp_mm = rng.uniform(1.0, 3.0)
    m = rot.T / scale  # output voxel -> template voxel
    off = centre_vox - m @ (centre_vox + shift)
    axes = [np.arange(n, dtype=np.float32).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(vol.shape)]
    coords = []
    for a in range(3):
        u = smooth_field(vol.shape, rng, warp_mm / spacing, order=3)
        coords.append(m[a, 0] * axes[0] + m[a, 1] * axes[1] + m[a, 2] * axes[2] + np.float32(off[a]) + u)
    return ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, prefilter=False)


def apply_contrast(vol, rng: np.random.Generator) -> np.ndarray:
    """Gamma 0.75-1.35 on the 0..1 template scale, then a scanner gain of 700-1400."""
    gamma, gain = rng.uniform(0.75, 1.35), rng.uniform(700.0, 1400.0)
    return np.float32(gain) * np.power(np.clip(vol, 0.0, None), np.float32(gamma))


def apply_bias_field(vol, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field, exp of a low-order field with |log| <= 0.05-0.25."""
    return vol * np.exp(smooth_field(vol.shape, rng, rng.uniform(0.05, 0.25), order=2))


def add_rician_noise(vol, rng: np.random.Generator) -> np.ndarray:
    """Rician noise with sigma 1-4% of the 99th-percentile intensity (background stays near 0)."""
    sigma = np.float32(rng.uniform(0.01, 0.04) * np.percentile(vol[::3, ::3, ::3], 99))
    real = vol + sigma * rng.standard_normal(vol.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(vol.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


# ---------------------------------------------------------------- one subject


def subject_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent streams per edit for subject ``index`` (independent of cohort size)."""
    names = ("pathology", "lesions", "cortex", "deform", "contrast", "bias", "noise")
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(len(names))
    return {k: np.random.default_rng(s) for k, s in zip(names, children)}


def edit_anatomy(tpl: Template, label: str, seed: int, index: int) -> np.ndarray:
    """Template-space T1 (0..1) of subject ``index`` with its class edits and shams."""
    rngs = subject_rngs(seed, index)
    p = sample_pathology(label, rngs["pathology"])
    t1 = add_lesions(tpl.t1, tpl.wm, tpl.csf_level, tpl.spacing, p.lesion_contrast, rngs["lesions"])
    t1 = thin_cortex(t1, tpl.outer_gm, tpl.csf_level, p.cortex_thinning, rngs["cortex"])
    return enlarge_ventricles(t1, tpl.push, tpl.push_box, tpl.spacing, p.ventricle_mm)


def simulate_subject(tpl: Template, label: str, seed: int, index: int) -> np.ndarray:
    """Scanner-like RAS float32 image of subject ``index`` on the template grid."""
    rngs = subject_rngs(seed, index)
    t1 = edit_anatomy(tpl, label, seed, index)
    centre = np.argwhere(tpl.brain).mean(0)
    vol = deform(t1, centre, tpl.spacing, rngs["deform"])
    vol = apply_contrast(vol, rngs["contrast"])
    vol = apply_bias_field(vol, rngs["bias"])
    return add_rician_noise(vol, rngs["noise"]).astype(np.float32)


# ---------------------------------------------------------------- where the lesions are


def lesion_weights(tpl: Template, label: str, seed: int, index: int) -> np.ndarray:
    """Template-space weight (0..1) of subject ``index``'s lesions, after the ventricle push: the
    fraction of the way to CSF intensity that :func:`add_lesions` pulls each voxel at full contrast
    (its own draws on a unit image, so the lesions are those of :func:`edit_anatomy`). Every
    class has lesions; only the ``lesion`` class's are visible (the others are shams)."""
    rngs = subject_rngs(seed, index)
    p = sample_pathology(label, rngs["pathology"])
    weight = 1.0 - add_lesions(np.ones_like(tpl.t1), tpl.wm, 0.0, tpl.spacing, 1.0, rngs["lesions"])
    return enlarge_ventricles(weight, tpl.push, tpl.push_box, tpl.spacing, p.ventricle_mm)


def lesion_mask(tpl: Template, label: str, seed: int, index: int,
                threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, affine)``: subject ``index``'s lesions (weight >= ``threshold``, 0.5: inside each
    ellipsoid's surface) on the voxel grid of its simulated scan file, moved by the same pose,
    scaling and warp as the scan (:func:`deform` with the subject's own draws) and flipped where
    the file is LAS, so the mask overlays ``sub-demoNNNN.nii`` voxel for voxel. Nothing of the
    simulated scans changes: the masks are recomputed from ``(seed, index)``."""
    centre = np.argwhere(tpl.brain).mean(0)
    moved = deform(lesion_weights(tpl, label, seed, index), centre, tpl.spacing, subject_rngs(seed, index)["deform"])
    mask, affine = moved >= threshold, tpl.affine
    if index % LAS_EVERY == 1:
        mask, affine = to_las(mask, affine)
    return mask, affine


def to_las(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the first axis and fix the affine so every voxel keeps its world position."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    return np.ascontiguousarray(data[::-1]), affine @ flip


def balanced_labels(n_subjects: int, seed: int) -> list[str]:
    """``n_subjects`` labels split as evenly as possible over CLASSES, shuffled by ``seed``."""
    labels = np.array([CLASSES[k % len(CLASSES)] for k in range(n_subjects)])
    return [str(x) for x in np.random.default_rng(np.random.SeedSequence(seed)).permutation(labels)]


def subject_id(index: int) -> str:
    return f"demo{index + 1:04d}"


_FORK_TEMPLATE: Template | None = None   # the template that forked simulation workers inherit


def _write_subject(job: tuple[int, str, int, Path], tpl: Template | None = None) -> None:
    """Simulate subject ``i`` and write its NIfTI file (the same bytes of data in any process)."""
    i, label, seed, nifti_dir = job
    tpl = tpl or _FORK_TEMPLATE
    data, affine = simulate_subject(tpl, label, seed, i), tpl.affine
    if i % LAS_EVERY == 1:
        data, affine = to_las(data, affine)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"medcl demo: simulated pathology, not patient data"
    # Uncompressed: gzip of these noisy float32 volumes saves 10% of the bytes and costs 0.4 s a
    # write and 0.16 s a read, as much as simulating the subject (docs/performance.md).
    nib.save(img, nifti_dir / f"sub-{subject_id(i)}.nii")


def _write_subjects(tpl: Template, jobs: list, workers: int, progress: bool = False) -> None:
    """Every job, in ``workers`` forked processes when there are several (each subject is seeded
    by its index, so the data do not depend on who simulates it); serial otherwise, and for
    whatever a broken pool (a worker killed) left undone."""
    global _FORK_TEMPLATE
    done: set[int] = set()
    bar = tqdm(total=len(jobs), desc="simulate", unit="subject", disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        _FORK_TEMPLATE = tpl
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for job, _ in zip(jobs, pool.map(_write_subject, jobs, chunksize=4)):
                    done.add(job[0])
                    bar.update()
        except BrokenProcessPool:
            warnings.warn(f"demo cohort: a simulation worker died; simulating the {len(jobs) - len(done)} "
                          "subjects left in this process", RuntimeWarning, stacklevel=2)
        finally:
            _FORK_TEMPLATE = None
    for job in jobs:
        if job[0] not in done:
            _write_subject(job, tpl)
            bar.update()
    bar.close()


def make_demo_sources(out_dir: Path, n_subjects: int = 60, seed: int = 0,
                      spacing: float = 2.0, workers: int = 0, progress: bool = False) -> DemoSources:
    """Write the demo cohort (NIfTI files, labels.csv, README.txt) under ``out_dir``;
    ``workers`` processes simulate it (0: one per CPU core); ``progress``: a bar over subjects."""
    if n_subjects < 1:
        raise ValueError(f"make_demo_sources: n_subjects must be >= 1, got {n_subjects}")
    if not 1.0 <= spacing <= 8.0:
        raise ValueError(f"make_demo_sources: spacing must be in [1, 8] mm, got {spacing}")
    out_dir = Path(out_dir)
    nifti_dir = out_dir / "nifti"
    nifti_dir.mkdir(parents=True, exist_ok=True)
    tpl = load_template(float(spacing))
    labels = balanced_labels(n_subjects, seed)
    jobs = [(i, label, seed, nifti_dir) for i, label in enumerate(labels)]
    _write_subjects(tpl, jobs, workers or os.cpu_count() or 1, progress)
    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "label"])
        writer.writerows((subject_id(i), lab) for i, lab in enumerate(labels))
    (out_dir / "README.txt").write_text(README_TEXT, encoding="utf-8")
    counts = {c: labels.count(c) for c in CLASSES}
    return DemoSources(nifti_dir=nifti_dir, labels_csv=labels_csv, counts=counts)
