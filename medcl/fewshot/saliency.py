"""Where it looked: 3D saliency of a few-shot head's class score, with MONAI's own tools.

The frozen encoder and the deployed :class:`~medcl.fewshot.heads.LinearHead` are one torch
module (:class:`ClassScores`: view -> class logits, the head's centring, L2 normalisation and
temperature included), so :mod:`monai.visualize` explains the class score directly:

- ``occlusion`` (``monai.visualize.OcclusionSensitivity``, Zeiler & Fergus 2014): a cube of the
  view is replaced by the view's mean, sliding over the view; the saliency of a voxel is the
  drop of the class logit when the cubes holding it are occluded (positive: the region speaks
  for the class). Fine-grained; one forward pass per cube position.
- ``gradcam`` (``monai.visualize.GradCAM``, Selvaraju et al. 2017) on the encoder's last stage
  (``layer4``): cheap, but as coarse as that stage (the view / 16: 3³ cells of a 48³ view, too
  coarse for a lesion of a few voxels).
- ``gradient`` (``monai.visualize.VanillaGrad``, Simonyan et al. 2014): the magnitude of the
  class logit's gradient with respect to each voxel of the view — how much the score changes
  when that voxel changes. One backward pass, at the view's full resolution. (Not gradient ×
  input: on deviation maps the input itself is large where a scan departs from the pool, so
  gradient × input would point at lesions whatever the model reads; the magnitude alone does
  not, docs/fewshot.md.)

A map is made on the evaluation view (the head's bounding box resized to the view size) and
taken back to the preprocessed scan (:func:`view_to_image`: inverse resize into the crop box),
then to the scan's own voxel grid (:func:`image_to_scan`: through the registration transform
and the affines that ingest records in :class:`~medcl.data.ingest.Preprocessed`), so it
overlays the source scan in any viewer. :func:`region_means` summarises a map per region of a
label image (e.g. the template's ventricles, white matter, cortex) and :func:`concentration`
measures how much of it falls inside a mask against masks shifted at random (the baseline).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM, OcclusionSensitivity, VanillaGrad
from scipy import ndimage
from torch import nn

from medcl.augment import eval_view
from medcl.augment.params import identity_view
from medcl.data.demo import load_template
from medcl.data.register import template_grid

__all__ = ["METHODS", "ClassScores", "view_saliency", "view_to_image", "image_to_scan", "scan_to_image",
           "region_means", "concentration", "template_crop", "template_regions", "explain_examples"]

METHODS = ("occlusion", "gradcam", "gradient")


class ClassScores(nn.Module):
    """``(B, 1, S, S, S)`` views -> ``(B, C)`` class logits of ``head`` on ``encoder``'s features
    (divided by the head's temperature). A vector-scaled head's calibration (``scale_``,
    ``shift_``) is left out on purpose: it maps class ``c``'s score to ``a_c * s + b_c``, which
    only multiplies that class's map by ``a_c >= 0``, and a class whose ``a_c`` is 0 (its score
    says nothing the others do not) would get an empty map; the head's own score is explained."""

    def __init__(self, encoder: nn.Module, head):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.as_tensor(head.mean_, dtype=torch.float32))
        self.register_buffer("weight", torch.as_tensor(head.weight_, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(head.bias_, dtype=torch.float32))
        self.normalise, self.temperature = bool(head.normalise), float(getattr(head, "temperature", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x) - self.mean
        if self.normalise:
            z = F.normalize(z, dim=1)
        return (z @ self.weight.T + self.bias) / self.temperature


def view_saliency(encoder: nn.Module, head, view: torch.Tensor, class_idx: int, method: str = "occlusion",
                  mask_size: int | None = None, overlap: float = 0.5) -> np.ndarray:
    """Saliency ``(S, S, S)`` of class ``class_idx``'s score on one view ``(1, S, S, S)``.
    ``mask_size`` (occlusion): side of the occluding cube in voxels (default: a sixth of the view)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; known: {', '.join(METHODS)}")
    model = ClassScores(encoder, head).eval()
    x = torch.as_tensor(view, dtype=torch.float32)[None]
    if method == "gradcam":
        cam = GradCAM(model, target_layers="encoder.net.layer4")
        with torch.enable_grad():
            return cam(x.requires_grad_(True), class_idx=int(class_idx))[0, 0].detach().numpy()
    if method == "gradient":
        with torch.enable_grad():
            return VanillaGrad(model)(x, index=int(class_idx))[0, 0].detach().abs().numpy()
    size = int(mask_size or max(4, x.shape[-1] // 6))
    occ = OcclusionSensitivity(model, mask_size=size, n_batch=32, verbose=False, mode="mean_img", overlap=overlap,
                               activate=False)
    with torch.no_grad():
        base = float(model(x)[0, class_idx])
        occluded, _ = occ(x)
    # (B, N, *spatial) in MONAI 1.6 (older releases: (B, C, *spatial, N))
    per_class = occluded[0, int(class_idx)] if occluded.ndim == x.ndim else occluded[0, 0, ..., int(class_idx)]
    return (base - per_class).numpy()


def view_to_image(saliency: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A view-space map back on the preprocessed image (shape of ``mask``): resized to the crop
    box of the evaluation view (:func:`~medcl.augment.params.identity_view`), zero outside it."""
    p = identity_view(np.asarray(mask, bool))
    t = torch.as_tensor(np.asarray(saliency, np.float32))[None, None]
    box = F.interpolate(t, size=tuple(int(n) for n in p.crop_size), mode="trilinear", align_corners=False)[0, 0]
    out = np.zeros(mask.shape, np.float32)
    out[tuple(slice(s, s + n) for s, n in zip(p.crop_start, p.crop_size))] = box.numpy()
    return out


def _resample(src: np.ndarray, src_affine: np.ndarray, world: np.ndarray, shape: tuple,
              affine: np.ndarray) -> np.ndarray:
    """``src`` (voxel -> RAS ``src_affine``) resampled (linear, zero outside) onto the grid
    ``shape`` / ``affine``, whose RAS points ``world`` maps into ``src``'s RAS space."""
    m = np.linalg.inv(src_affine) @ np.asarray(world, float) @ np.asarray(affine, float)
    return ndimage.affine_transform(np.asarray(src, np.float32), m[:3, :3], offset=m[:3, 3],
                                    output_shape=tuple(int(n) for n in shape[:3]), order=1, cval=0.0)


def image_to_scan(image_map: np.ndarray, image_affine: np.ndarray, transform: np.ndarray,
                  scan_shape: tuple, scan_affine: np.ndarray) -> np.ndarray:
    """A map on the preprocessed image (voxel -> RAS ``image_affine``, template space when
    registered) resampled onto the scan's own grid (``scan_shape``, voxel -> RAS ``scan_affine``)
    through ``transform`` (scan RAS -> template RAS; the identity without registration)."""
    return _resample(image_map, image_affine, transform, scan_shape, scan_affine)


def scan_to_image(scan_map: np.ndarray, scan_affine: np.ndarray, transform: np.ndarray,
                  image_shape: tuple, image_affine: np.ndarray) -> np.ndarray:
    """The reverse of :func:`image_to_scan`: a map on the scan's own grid (e.g. a lesion mask)
    carried onto the preprocessed image's grid through the registration."""
    return _resample(scan_map, scan_affine, np.linalg.inv(np.asarray(transform, float)), image_shape, image_affine)


def region_means(saliency: np.ndarray, regions: dict) -> dict:
    """Mean saliency inside each boolean region mask (same shape); regions with no voxel: None."""
    return {name: (float(saliency[m].mean()) if m.any() else None) for name, m in regions.items()}


def concentration(saliency: np.ndarray, mask: np.ndarray, within: np.ndarray | None = None, n_shuffle: int = 200,
                  seed: int = 0, baseline: list | None = None) -> dict:
    """Mean positive saliency inside ``mask`` against the same mask shifted at random inside
    ``within`` (the brain; default everywhere), or against the masks in ``baseline`` (e.g. other
    subjects' lesions, each cut to ``within``): ``{"inside", "baseline_mean", "baseline_95",
    "fraction_above", "ratio", "n_baseline"}`` (``fraction_above``: baseline masks whose mean the
    real mask beats; ``ratio``: ``inside / baseline_mean``)."""
    s = np.clip(np.asarray(saliency, float), 0, None)
    mask = np.asarray(mask, bool)
    within = np.ones(mask.shape, bool) if within is None else np.asarray(within, bool)
    if baseline is None:
        rng = np.random.default_rng(seed)
        baseline = [np.roll(mask, [int(rng.integers(-n // 2, n // 2 + 1)) for n in mask.shape], axis=(0, 1, 2))
                    for _ in range(n_shuffle)]
    inside = float(s[mask].mean())
    base = np.array([float(s[m].mean()) for m in (np.asarray(b, bool) & within for b in baseline) if m.any()])
    if not len(base):
        return {"inside": inside, "baseline_mean": None, "baseline_95": None, "fraction_above": None, "ratio": None,
                "n_baseline": 0}
    mean = float(base.mean())
    return {"inside": inside, "baseline_mean": mean, "baseline_95": float(np.percentile(base, 95)),
            "fraction_above": float(np.mean(inside > base)), "ratio": inside / mean if mean > 0 else None,
            "n_baseline": int(len(base))}


def template_crop(image_shape: tuple, spacing: float, crop_margin: int) -> tuple[tuple, np.ndarray]:
    """``(box, affine)`` of a scan registered to the template and masked with its brain
    (``data.register`` + ``brain_mask: template``): the template grid cropped to the brain's box
    plus ``crop_margin`` (``box``: its slices of the template grid; ``affine``: voxel -> MNI RAS)."""
    grid = template_grid(spacing)
    lo = np.maximum(np.argwhere(grid.brain).min(0) - crop_margin, 0)
    box = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(lo, image_shape))
    if grid.brain[box].shape != tuple(image_shape):
        raise ValueError(f"template regions: the scan grid {tuple(image_shape)} is not the template's crop")
    shift = np.eye(4)
    shift[:3, 3] = lo
    return box, grid.affine @ shift


def template_regions(image_shape: tuple, spacing: float, crop_margin: int) -> dict:
    """Regions of the MNI template (ventricles, white matter, cortex, other brain) on the grid of
    a scan registered to it and masked with its brain (:func:`template_crop`)."""
    box, _ = template_crop(image_shape, spacing, crop_margin)
    grid, tpl = template_grid(spacing), load_template(spacing)
    brain = grid.brain[box]
    if tpl.gm.shape != grid.brain.shape:
        raise ValueError(f"template regions: the scan grid {tuple(image_shape)} is not the template's crop")
    ven = tpl.ventricles[box] & brain
    wm, gm = (tpl.wm[box] > 0.5) & brain & ~ven, (tpl.gm[box] > 0.5) & brain & ~ven
    return {"ventricles": ven, "white matter": wm, "cortex": gm, "other brain": brain & ~(ven | wm | gm)}


def explain_examples(encoder, head, cohort, features, view_size: int, per_class: int = 1, method: str = "gradcam",
                     regions: dict | None = None, seed: int = 0) -> list[dict]:
    """Up to ``per_class`` correctly and ``per_class`` wrongly classified scans of each class
    (by the head on ``features``, the cohort's embeddings): the saliency of the predicted class's
    score on the preprocessed image, the image, and the mean saliency per region (``regions``:
    boolean masks on the image grid) relative to the brain's (or image's) mean."""
    labels = np.asarray(cohort.labels).astype(str)
    pred = np.asarray(head.predict(features)).astype(str)
    rng = np.random.default_rng(seed)
    out = []
    for c in sorted(set(labels)):
        for correct in (True, False):
            rows = np.flatnonzero((labels == c) & ((pred == c) == correct))
            for i in rng.permutation(rows)[:per_class]:
                image, mask = cohort.image(int(i)), cohort.mask(int(i))
                k = int(np.flatnonzero(np.asarray(head.classes_).astype(str) == pred[i])[0])
                sal = view_to_image(view_saliency(encoder, head, eval_view(image, mask, view_size), k, method), mask)
                out.append({"label": c, "predicted": str(pred[i]), "correct": correct, "image": cohort.intensity(int(i)),
                            "saliency": sal, "regions": _relative(sal, mask, regions)})
    return out


def _relative(sal: np.ndarray, mask: np.ndarray, regions: dict | None) -> dict:
    """Mean saliency per region divided by the mean inside ``mask`` (1: no preference); ``None``
    for every region when the map is zero inside the mask (Grad-CAM found no positive evidence)."""
    if not regions:
        return {}
    ref = float(np.abs(sal[mask]).mean())
    return {k: (None if v is None or ref == 0 else v / ref) for k, v in region_means(sal, regions).items()}
