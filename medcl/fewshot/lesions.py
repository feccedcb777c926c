"""Does the saliency point at the pathology? The demo's lesions against a shuffled-mask baseline.

The demo cohort's lesions are simulated, so where they are is known: :func:`medcl.data.demo.lesion_mask`
recomputes a subject's lesion mask on the grid of its simulated scan from ``(seed, index)``.
:func:`demo_lesion_masks` finds each cohort scan's source file (by the content hash ingest
records), and carries its mask through the scan's registration onto the cohort's image grid
(:func:`~medcl.fewshot.saliency.scan_to_image`; the cohort must be registered to the template
and brain-masked, as the demo's is, so that every image shares the template's crop).

:func:`lesion_concentration` then takes, for each lesion-class scan, the saliency of the
*lesion class's* score (whatever the head predicted) and compares its mean positive value inside
the scan's own lesion mask with its mean inside every other subject's lesion mask (the shuffled
baseline: lesion-shaped, lesion-sized regions at places where the simulation puts lesions, in
deep white matter, but not where this scan's lesions are). ``ratio`` is inside over that
baseline's mean (1: no preference); ``fraction_above`` the share of the other masks it beats.

Example::

    >>> masks = demo_lesion_masks(cohort, src.nifti_dir, seed=0, spacing=2.0, crop_margin=2)   # doctest: +SKIP
    >>> lesion_concentration(encoder, head, cohort, masks, 48, "occlusion")["median_ratio"]      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.augment import eval_view
from medcl.data.demo import load_template, lesion_mask
from medcl.data.readers import source_sha256
from medcl.data.sources import ScanSource
from medcl.fewshot.saliency import concentration, scan_to_image, template_crop, view_saliency, view_to_image
from medcl.fewshot.stats import subject_bootstrap_mean

__all__ = ["demo_lesion_masks", "lesion_concentration"]


def _demo_index(path: Path) -> int:
    """``sub-demo0007.nii`` -> 6 (:func:`medcl.data.demo.subject_id` read backwards)."""
    digits = path.name.split(".")[0].removeprefix("sub-demo")
    if not digits.isdigit():
        raise ValueError(f"{path}: not a demo cohort scan (expected sub-demoNNNN.nii)")
    return int(digits) - 1


def demo_lesion_masks(cohort, nifti_dir: Path, seed: int, spacing: float, crop_margin: int,
                      threshold: float = 0.5, keys=None) -> dict[str, np.ndarray]:
    """``{scan_key: bool mask on the cohort image's grid}`` of every scan of ``cohort`` (or of its
    scan keys in ``keys``) whose source is one of the demo's files in ``nifti_dir`` (simulated with
    ``seed`` at ``spacing``)."""
    by_hash = {source_sha256(ScanSource(p, "", "", "nifti")): p for p in sorted(Path(nifti_dir).glob("sub-demo*.nii*"))}
    tpl = load_template(float(spacing))
    out = {}
    for i, row in enumerate(cohort.rows):
        path = by_hash.get(row["source_sha256"])
        if path is None or (keys is not None and row["scan_key"] not in keys):
            continue
        brain = cohort.mask(i)          # the image's grid (its shape) without reading the image
        image_shape = brain.shape
        _, image_affine = template_crop(image_shape, spacing, crop_margin)
        mask, affine = lesion_mask(tpl, row["label"], seed, _demo_index(path), threshold)
        if not np.allclose(affine, nib.load(str(path)).affine, atol=1e-4):
            raise ValueError(f"{path}: its grid is not the one simulated with spacing {spacing:g} mm")
        on_image = scan_to_image(mask.astype(np.float32), affine, cohort.transform(i), image_shape, image_affine)
        out[row["scan_key"]] = (on_image >= 0.5) & brain
    return out


def lesion_concentration(encoder, head, cohort, masks: dict, view_size: int, method: str = "occlusion",
                         lesion_class: str = "lesion", max_scans: int | None = None, n_boot: int = 1000,
                         seed: int = 0, keep_maps: bool = False) -> dict:
    """Saliency of ``lesion_class``'s score on the lesion-class scans of ``cohort`` that have a
    mask (the first ``max_scans``), inside their own lesions against every other subject's
    lesion mask: per scan :func:`~medcl.fewshot.saliency.concentration`, and over the scans with
    some positive saliency (``n_scans``; ``n_without_saliency``: maps zero in every mask) the
    median and mean ratio (95% bootstrap CI over scans) and the share whose own mask beats 95% of
    the others. ``keep_maps``: each scan's entry keeps its ``saliency`` (image grid) and ``row``."""
    k = int(np.flatnonzero(np.asarray(head.classes_).astype(str) == lesion_class)[0])
    keys, subjects = cohort.scan_keys, cohort.subjects
    rows = [i for i in range(len(cohort)) if cohort.labels[i] == lesion_class and keys[i] in masks and masks[keys[i]].any()]
    per_scan = []
    for i in rows[:max_scans]:
        image, brain = cohort.image(i), cohort.mask(i)
        others = [masks[keys[j]] for j in range(len(cohort)) if keys[j] in masks and subjects[j] != subjects[i]]
        sal = view_to_image(view_saliency(encoder, head, eval_view(image, brain, view_size), k, method), brain)
        per_scan.append(concentration(sal, masks[keys[i]], brain, baseline=others))
        if keep_maps:
            per_scan[-1].update(saliency=sal, row=i)
    ratios = np.array([c["ratio"] if c["ratio"] is not None else np.nan for c in per_scan], float)
    ok = ~np.isnan(ratios)
    out = {"method": method, "class": lesion_class, "n_scans": int(ok.sum()), "n_without_saliency": int((~ok).sum()),
           "per_scan": per_scan}
    if ok.any():
        subj = np.unique(subjects[rows[:len(per_scan)]], return_inverse=True)[1]
        mean, ci = subject_bootstrap_mean(np.nan_to_num(ratios), subj, ok, n_boot, seed)
        out.update(median_ratio=float(np.median(ratios[ok])), mean_ratio=mean, mean_ratio_ci95=ci,
                   fraction_above_95=float(np.mean([c["fraction_above"] >= 0.95 for c, r in zip(per_scan, ok) if r])))
    return out
