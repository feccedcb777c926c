"""Registration to the MNI ICBM152 2009 template (rigid or affine), with SimpleITK.

The fixed image is the T1 template that nilearn ships in ``nilearn/datasets/data/``
(``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, the same file the demo cohort is
simulated on; licence notice in :mod:`medcl.data.demo`); nothing is downloaded. Its brain mask
is ``GM + WM probability > 0.5`` (the maps beside it), closed and hole-filled so that the
ventricles are inside.

The transform is estimated on 4 mm copies of both images (Mattes mutual information, a
moments-centred initializer, two resolution levels: 8 mm then 4 mm, regular-step gradient
descent, a fixed sampling seed and one thread for every SimpleITK filter involved, so the
same scan gives the same bits on any machine: ITK's threaded reductions, such as the moments
of the initializer, add their parts in whatever order the threads finish), then the scan is resampled (linear) onto the template grid at the requested
spacing: every registered scan has the same shape and field of view. Images are handed to
SimpleITK in RAS world coordinates (direction and origin taken from the RAS affine): ITK only
needs both images in the same physical space, so no LPS flip is involved.

Example::

    >>> reg = register(data, affine, "affine", spacing=2.0)          # doctest: +SKIP
    >>> reg.image.shape == template_grid(2.0).shape                  # doctest: +SKIP
    True
    >>> reg.transform @ [x, y, z, 1.0]   # scan RAS mm -> template RAS mm  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcl.data.demo import template_dir
from medcl.data.errors import IngestError

__all__ = ["KINDS", "Registered", "TemplateGrid", "register", "template_grid"]

KINDS = ("rigid", "affine")
COARSE_MM = 4.0            # the transform is estimated on 4 mm copies ...
SHRINK = (2, 1)            # ... at 8 mm, then 4 mm
SMOOTH_MM = (4.0, 2.0)     # Gaussian sigma per level (physical units)
ITERATIONS = 40            # per level
SAMPLING = 0.1             # fraction of the fixed-mask voxels sampled by the metric (fixed seed)
MASK_DILATION = 2          # the metric samples the template brain dilated by 2 voxels (8 mm)
SEED = 20090101
MAX_LOG_SCALE = np.log(1.6)   # a head 1.6x larger or smaller than the template: registration failed
_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True, eq=False)
class TemplateGrid:
    """The template on an isotropic grid of ``spacing`` mm (RAS, the template's origin)."""

    t1: np.ndarray      # float32 0..1
    brain: np.ndarray   # bool brain mask (GM + WM > 0.5, closed, holes filled)
    affine: np.ndarray  # voxel -> RAS mm
    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1.shape


@dataclass(frozen=True, eq=False)
class Registered:
    image: np.ndarray      # float32 on the template grid
    transform: np.ndarray  # 4x4, scan RAS mm -> template RAS mm
    grid: TemplateGrid


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A (X, Y, Z) array with a voxel -> RAS affine as a SimpleITK image in RAS world space."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing([float(z) for z in zooms])
    img.SetDirection((affine[:3, :3] / zooms).ravel().tolist())
    img.SetOrigin(affine[:3, 3].tolist())
    return img


def _from_sitk(img: sitk.Image) -> np.ndarray:
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def _coarse(img: sitk.Image, mm: float) -> sitk.Image:
    """Anti-aliased copy at ``mm`` isotropic over the same extent (unchanged if already coarser):
    a k x k x k box average when ``mm`` is k times the spacing (2 mm scans: 4x cheaper), else a
    Gaussian and a linear resampling."""
    spacing = np.array(img.GetSpacing())
    if np.all(spacing >= mm - 1e-6):
        return img
    k = mm / spacing
    if np.allclose(k, np.round(k), atol=1e-6):
        return sitk.BinShrink(img, [int(round(x)) for x in k])
    sigma = np.sqrt(np.clip(mm ** 2 - spacing ** 2, 0, None)) / 2.355
    img = sitk.SmoothingRecursiveGaussian(img, sigma.tolist())
    size = [max(int(round(n * s / mm)), 2) for n, s in zip(img.GetSize(), spacing)]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), [mm] * 3,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


@functools.lru_cache(maxsize=4)
def template_grid(spacing: float) -> TemplateGrid:
    """The template and its brain mask at ``spacing`` mm (read once per process and spacing)."""
    vols = {k: nib.load(template_dir() / _FILE.format(k)) for k in ("t1", "gm", "wm")}
    src_affine = vols["t1"].affine
    arrays = {k: np.asarray(im.dataobj, dtype=np.float32) / 255.0 for k, im in vols.items()}
    if spacing > 1.0:
        arrays = {k: ndimage.gaussian_filter(v, (spacing - 1.0) / 2.0) for k, v in arrays.items()}
    shape = tuple(int((n - 1) // spacing) + 1 for n in arrays["t1"].shape)
    arrays = {k: ndimage.affine_transform(v, np.full(3, spacing), output_shape=shape, order=1)
              for k, v in arrays.items()}
    brain = ndimage.binary_closing(arrays["gm"] + arrays["wm"] > 0.5, iterations=2)
    brain = ndimage.binary_fill_holes(brain)
    affine = src_affine.copy()
    affine[:3, :3] *= spacing
    return TemplateGrid(t1=arrays["t1"], brain=brain, affine=affine, spacing=float(spacing))


@functools.lru_cache(maxsize=1)
def _fixed() -> tuple[sitk.Image, sitk.Image]:
    """The template T1 at COARSE_MM (the fixed image of every registration) and the metric's
    mask: its brain dilated by MASK_DILATION voxels (the metric looks at the brain and its
    border, not at the neck and scalp, which vary most between heads)."""
    grid = template_grid(COARSE_MM)
    near_brain = ndimage.binary_dilation(grid.brain, iterations=MASK_DILATION).astype(np.uint8)
    return _to_sitk(grid.t1, grid.affine), sitk.Cast(_to_sitk(near_brain, grid.affine), sitk.sitkUInt8)


def _method(fixed_mask: sitk.Image) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(SAMPLING, SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=ITERATIONS,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTH_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _estimate(moving: sitk.Image, kind: str) -> sitk.Transform:
    """Template -> scan transform (ITK's direction: fixed points to moving points)."""
    fixed, fixed_mask = _fixed()
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    if kind == "affine":
        euler = init
        init = sitk.AffineTransform(3)
        init.SetCenter(euler.GetCenter())
        init.SetMatrix(euler.GetMatrix())
        init.SetTranslation(euler.GetTranslation())
    reg = _method(fixed_mask)
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    return init


def _matrix(tx: sitk.Transform) -> np.ndarray:
    """4x4 of an ITK matrix-offset transform: x -> A (x - c) + c + t."""
    a = np.array(tx.GetMatrix()).reshape(3, 3)
    c, t = np.array(tx.GetCenter()), np.array(tx.GetTranslation())
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a, c + t - a @ c
    return m


@contextmanager
def _one_thread():
    """SimpleITK's global default thread count set to 1 for the block (restored after). Ingest
    runs one worker process per core, so a worker loses nothing by it."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register(data: np.ndarray, affine: np.ndarray, kind: str, spacing: float) -> Registered:
    """Register a RAS volume to the template (``kind``: rigid | affine) and resample it onto the
    template grid at ``spacing`` mm. Raises IngestError when the optimiser fails or the result
    scales the head by more than 1.6x."""
    if kind not in KINDS:
        raise ValueError(f"register: kind must be one of {KINDS}, got {kind!r}")
    moving = _to_sitk(data, affine)
    try:
        with _one_thread():
            tx = _estimate(_coarse(moving, COARSE_MM), kind)
    except RuntimeError as exc:
        raise IngestError(f"registration to the MNI template failed ({str(exc).strip().splitlines()[-1]})") from None
    to_scan = _matrix(tx)   # template RAS -> scan RAS
    log_scale = np.log(abs(np.linalg.det(to_scan[:3, :3]))) / 3
    if not np.isfinite(log_scale) or abs(log_scale) > MAX_LOG_SCALE:
        raise IngestError(f"registration to the MNI template failed (scale {np.exp(log_scale):.2f})")
    grid = template_grid(float(spacing))
    ref = _to_sitk(np.zeros(grid.shape, np.float32), grid.affine)
    with _one_thread():
        out = sitk.Resample(moving, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Registered(image=_from_sitk(out), transform=np.linalg.inv(to_scan), grid=grid)
