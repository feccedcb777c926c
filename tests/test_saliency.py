"""Saliency (medcl.fewshot.saliency): MONAI's occlusion sensitivity of a head's class score
points at the region the score depends on (a model whose answer is known), and a map goes back
from the evaluation view to the scan's own voxel grid, whatever its orientation and spacing."""

import numpy as np
import torch
from torch import nn

from medcl.augment import eval_view
from medcl.config import DataConfig
from medcl.data.ingest import preprocess
from medcl.fewshot.heads import LinearHead
from medcl.fewshot.saliency import (ClassScores, concentration, image_to_scan, region_means, view_saliency,
                                    view_to_image)
from medcl.models import build_encoder
from support import head_volume

S = 24
BOX = (slice(4, 10), slice(12, 18), slice(8, 14))


class BoxEncoder(nn.Module):
    """Features (mean intensity inside BOX, mean intensity elsewhere): a known dependence."""

    def forward(self, x):
        inside = torch.zeros(x.shape[-3:], dtype=torch.bool)
        inside[BOX] = True
        return torch.stack([x[..., inside].mean(-1)[:, 0], x[..., ~inside].mean(-1)[:, 0]], 1)


def _head():
    """Class 'lesion' scores the BOX mean, class 'healthy' its negative."""
    return LinearHead(["healthy", "lesion"], np.zeros(2), np.array([[-4.0, 0.0], [4.0, 0.0]]), np.zeros(2), False,
                      temperature=2.0)


def test_occlusion_saliency_is_concentrated_where_the_score_looks():
    view = torch.as_tensor(np.random.default_rng(0).normal(size=(1, S, S, S)).astype(np.float32)) + 1.0
    sal = view_saliency(BoxEncoder(), _head(), view, class_idx=1, method="occlusion", mask_size=4)
    mask = np.zeros((S,) * 3, bool)
    mask[BOX] = True
    c = concentration(sal, mask, n_shuffle=100)
    assert c["inside"] > 3 * c["baseline_mean"] and c["fraction_above"] >= 0.95
    far = np.ones((S,) * 3, bool)
    far[2:12, 10:20, 6:16] = False                               # the box with the occluder's reach
    assert np.abs(sal[far]).max() < 1e-5                         # occluding elsewhere changes nothing
    # the temperature is part of the explained score: logits / 2
    logits = ClassScores(BoxEncoder(), _head())(view[None])
    assert torch.allclose(logits, torch.as_tensor(_head().decision_function(BoxEncoder()(view[None]).numpy()) / 2.0,
                                                  dtype=torch.float32), atol=1e-5)
    means = region_means(sal, {"box": mask, "rest": ~mask, "none": np.zeros_like(mask)})
    assert means["box"] > means["rest"] and means["none"] is None


def test_gradcam_on_the_encoders_last_stage_gives_a_view_sized_map():
    enc = build_encoder("resnet10", widen_factor=0.25, seed=0).eval()
    rng = np.random.default_rng(0)
    head = LinearHead(["a", "b"], np.zeros(enc.feature_dim), rng.normal(size=(2, enc.feature_dim)), np.zeros(2), True)
    view = torch.as_tensor(rng.normal(size=(1, 32, 32, 32)).astype(np.float32))
    cams = [view_saliency(enc, head, view, c, method="gradcam") for c in (0, 1)]
    assert cams[0].shape == (32, 32, 32) and 0 <= cams[0].min() and cams[0].max() <= 1
    assert not np.allclose(cams[0], cams[1])                     # each class its own map


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_a_map_goes_back_to_the_scans_own_grid():
    vol = head_volume((30, 36, 28), blob=(slice(6, 11), slice(8, 13), slice(5, 10)), blob_value=150.0)
    # an oblique-free but flipped, permuted, anisotropic scan: voxel (i, j, k) -> RAS
    scan_affine = np.array([[0, 0, -3.0, 40], [2.5, 0, 0, -50], [0, 3.5, 0, -30], [0, 0, 0, 1]])
    pre = preprocess(vol, scan_affine, DataConfig(spacing=2.0))
    view = eval_view(pre.image, pre.mask, S)[0].numpy()
    back = view_to_image(view, pre.mask)                          # the view itself, mapped back
    inside = back != 0
    assert np.corrcoef(back[inside], pre.image[inside])[0, 1] > 0.9
    bright = (view > np.percentile(view, 99)).astype(np.float32)  # a 'saliency map' on the blob
    on_scan = image_to_scan(view_to_image(bright, pre.mask), pre.affine, pre.transform, vol.shape, scan_affine)
    blob = np.zeros(vol.shape, bool)
    blob[6:11, 8:13, 5:10] = True
    assert on_scan.shape == vol.shape and _dice(on_scan > 0.2, blob) > 0.5


def test_predict_explain_writes_a_map_that_overlays_the_source_scan(registered_models, tmp_path, capsys):
    import json

    import nibabel as nib

    from medcl.cli import main

    vol = np.zeros((52, 56, 48), np.float32)
    vol[8:44, 6:50, 8:40] = head_volume((36, 44, 32), seed=1)      # a head with air around it
    affine = np.array([[-3.0, 0, 0, 60], [0, 0, 3.5, -70], [0, 3.2, 0, -40], [0, 0, 0, 1]])   # flipped, permuted
    scan = tmp_path / "sub-x_T1w.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(scan))
    capsys.readouterr()
    rc = main(["predict", "--tracking-uri", registered_models["uri"], "--model", "models:/medcl-fewshot@champion",
               "--explain", str(tmp_path / "maps"), "--explain-method", "gradcam", str(scan), str(tmp_path / "no.nii")])
    out = capsys.readouterr()
    assert rc == 1 and "no.nii: error" in out.err                      # the bad scan fails alone
    line = json.loads(out.out.strip().splitlines()[0])
    ex = line["explanation"]
    assert ex["class"] == line["label"] and ex["method"] == "gradcam"
    assert ex["saliency"].endswith("000_sub-x_T1w_saliency.nii.gz")
    img = nib.load(ex["saliency"])
    sal = np.asarray(img.dataobj)
    assert sal.shape == vol.shape and np.allclose(img.affine, affine)  # the scan's own grid
    head = vol > 0.05 * vol.max()
    idx = np.argwhere(head)
    box = np.zeros(vol.shape, bool)
    box[tuple(slice(max(a - 3, 0), b + 4) for a, b in zip(idx.min(0), idx.max(0)))] = True
    assert sal[head].mean() > 0 and sal[~box].max() == 0               # nothing outside the head's box
