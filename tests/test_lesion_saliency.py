"""Saliency against the demo's simulated lesions (issue 14): the lesion masks the simulation
recomputes land where the simulated scans are darkened, and go through ingest's registration
onto the cohort's grid; on a model whose lesion score reads dark white matter, MONAI occlusion
saliency of the lesion class is concentrated in each scan's own lesions, far above the other
subjects' lesion masks (the shuffled-mask baseline), while the same masks mirrored are not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medcl.augment.params import identity_view
from medcl.config import DataConfig
from medcl.data.cohort import Cohort
from medcl.data.demo import LAS_EVERY, lesion_mask, load_template, make_demo_sources, simulate_subject
from medcl.data.ingest import ingest
from medcl.fewshot.heads import LinearHead
from medcl.fewshot.lesions import demo_lesion_masks, lesion_concentration
from medcl.fewshot.saliency import concentration, template_regions

SPACING, SEED, S = 3.0, 0, 32


def test_lesion_masks_are_where_the_simulation_darkens_the_scan():
    """Subject i simulated as 'lesion' and as 'healthy' differs only by the lesions' contrast."""
    tpl = load_template(SPACING)
    for i in (0, 1):                                              # subject 1 is written LAS
        lesion, healthy = simulate_subject(tpl, "lesion", SEED, i), simulate_subject(tpl, "healthy", SEED, i)
        if i % LAS_EVERY == 1:
            lesion, healthy = lesion[::-1], healthy[::-1]           # the file's voxel order
        darker = (healthy - lesion) / np.percentile(healthy, 99)
        mask, affine = lesion_mask(tpl, "lesion", SEED, i)
        assert mask.shape == lesion.shape and 50 < mask.sum() < 0.02 * mask.size
        assert darker[mask].mean() > 0.2 and darker[mask].mean() > 100 * abs(darker[~mask].mean())
        assert (darker[mask] > 0.05).mean() > 0.9                  # nearly every mask voxel is darkened
        wrong = mask[::-1] if i % LAS_EVERY == 1 else mask[:, :, ::-1]   # not flipped / mirrored
        assert darker[wrong].mean() < 0.25 * darker[mask].mean()
        if i % LAS_EVERY == 1:
            assert affine[0, 0] < 0                               # the LAS file's affine


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """Nine demo subjects (three per class) at 3 mm, ingested with registration and the
    template's brain mask, as the demo does."""
    root = tmp_path_factory.mktemp("lesion_demo")
    src = make_demo_sources(root / "src", 9, SEED, SPACING, workers=1)
    cfg = DataConfig(spacing=SPACING, register="affine", brain_mask="template", workers=1)
    ingest([src.nifti_dir], root / "cohort", cfg, labels_csv=src.labels_csv, test_fraction=0.5, split_seed=0,
           progress=False)
    cohort = Cohort.load(root / "cohort")
    return cohort, demo_lesion_masks(cohort, src.nifti_dir, SEED, SPACING, cfg.crop_margin), cfg


class DarkWhiteMatter(nn.Module):
    """Features (how much of the template's white matter is darker than its own level, the
    view's mean): a model whose lesion score really depends on the lesion voxels. A voxel counts
    when it lies between the view's mean and halfway up to the white matter's mean level, so a
    cube occluded with the view's mean loses its dark white matter and gains nothing."""

    def __init__(self, wm_view: np.ndarray):
        super().__init__()
        self.register_buffer("wm", torch.as_tensor(wm_view, dtype=torch.float32))

    def forward(self, x):
        n = self.wm.sum()
        ref = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        level = (x * self.wm).sum(dim=(1, 2, 3, 4), keepdim=True) / n
        band = F.relu((ref + level) / 2 - x) * F.relu(x - ref)
        return torch.stack([(band[:, 0] * self.wm).sum(dim=(1, 2, 3)) / n, ref.flatten()], 1)


def _wm_view(image_shape, brain, crop_margin):
    """The template's deep white matter in the evaluation view (the view's crop box, resized)."""
    wm = template_regions(image_shape, SPACING, crop_margin)["white matter"]
    p = identity_view(brain)
    box = wm[tuple(slice(s, s + n) for s, n in zip(p.crop_start, p.crop_size))].astype(np.float32)
    t = F.interpolate(torch.as_tensor(box)[None, None], size=(S,) * 3, mode="trilinear", align_corners=False)
    return (t[0, 0] > 0.9).numpy()


@pytest.mark.parametrize("method", ["occlusion", "gradient"])
def test_lesion_saliency_is_concentrated_in_the_simulated_lesions(tiny_demo, method):
    cohort, masks, cfg = tiny_demo
    assert set(masks) == set(cohort.scan_keys.tolist())          # every scan found its source and mask
    encoder = DarkWhiteMatter(_wm_view(cohort.image(0).shape, cohort.mask(0), cfg.crop_margin))
    head = LinearHead(["atrophy", "healthy", "lesion"], np.zeros(2), np.array([[0.0, 0.0], [-50.0, 0.0], [50.0, 0.0]]),
                      np.zeros(3), False)
    res = lesion_concentration(encoder, head, cohort, masks, S, method, n_boot=200, keep_maps=True)
    assert res["n_scans"] == 3 and all(c["n_baseline"] == 8 for c in res["per_scan"])
    assert res["median_ratio"] > 2.0 and all(c["ratio"] > 1.3 and c["fraction_above"] >= 0.85 for c in res["per_scan"])
    # the same maps against each scan's own mask mirrored left-right: no better than the others'
    for c in res["per_scan"]:
        others = [m for k, m in masks.items() if k != cohort.scan_keys[c["row"]]]
        mirrored = concentration(c["saliency"], masks[cohort.scan_keys[c["row"]]][::-1], cohort.mask(c["row"]),
                                 baseline=others)
        assert mirrored["ratio"] < 1.2, (mirrored, c)
