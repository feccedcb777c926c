"""A batch's view parameters reach the device in one packed transfer (medcl.augment.transfer),
and the packed numbers are the ones the separate copies gave.

The pinned, non-blocking copy itself needs a GPU (bench/gpu_smoke.sh); here, on the CPU, the
packing is checked through :func:`packed_copy` (the same code, with a CPU target), and the
device path's consumers of the packed parts (the sampling grid, the torch intensity steps)
against the numbers they compute for themselves.
"""

import numpy as np
import pytest
import torch

import medcl.augment.batched as batched
import medcl.augment.intensity as intensity
from medcl.augment.batched import _geometry_coefs, apply_views, grid_coefs, resample_views, voxel_maps
from medcl.augment.intensity import intensity_parts, intensity_views
from medcl.augment.params import sample_views
from medcl.augment.transfer import packed_copy, to_device
from medcl.config import AugmentConfig

# every intensity step on for some views, shear and a rotation for the grid, two local views
CFG = AugmentConfig(view_size=16, shear=0.06, gibbs_prob=0.3, spike_prob=0.3, blur_prob=0.5, rotate_deg=15,
                    local_views=2, local_size=8)


@pytest.fixture(scope="module")
def batch(mni_scan):
    groups = [sample_views(np.random.default_rng([0, 1, i]), mni_scan.mask, CFG)[:2] for i in range(4)]
    return torch.from_numpy(mni_scan.image.astype(np.float16)), groups


def _separate(parts, device="cpu"):
    """What the code did before: one ``.to(device, float32)`` per tensor."""
    return [p.to(device, torch.float32) for p in parts]


def test_packed_copy_gives_the_separate_copies(batch):
    image, groups = batch
    params = [p for g in groups for p in g]
    parts = [_geometry_coefs(groups, CFG.view_size, "composed", torch.device("cpu")), *intensity_parts(params)]
    packed = packed_copy(_separate(parts), "cpu")
    for got, want in zip(packed, _separate(parts), strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.equal(got, want)
    # one buffer: every part is a view of the same storage, one after the other
    assert len({t.untyped_storage().data_ptr() for t in packed}) == 1
    offsets = [t.storage_offset() for t in packed]
    assert offsets == np.concatenate([[0], np.cumsum([p.numel() for p in parts])[:-1]]).tolist()


def test_packing_keeps_shapes_and_empty_parts():
    parts = [torch.arange(6.0).view(2, 3), torch.empty(0), torch.tensor([[7.5]]), torch.zeros(0, 4),
             torch.tensor([1, 2, 3])]
    packed = packed_copy(_separate(parts), "cpu")
    assert [t.shape for t in packed] == [p.shape for p in parts]
    assert all(torch.equal(a, b) for a, b in zip(packed, _separate(parts)))
    assert packed_copy([], "cpu") == []


def test_to_device_on_the_cpu_copies_nothing():
    parts = [torch.rand(3, 2), torch.tensor([0.0, 4.0])]
    out = to_device(parts, "cpu")
    assert [t.data_ptr() for t in out] == [p.data_ptr() for p in parts]


def test_the_grid_coefficients_are_the_float64_maps_rounded_once(batch):
    """The sampling grid built from the packed coefficients equals the float64 map, per grid
    component and voxel, to float32 rounding (an independent evaluation of the same formula)."""
    _, groups = batch
    params = [p for g in groups for p in g]
    s, region = CFG.view_size, (70, 80, 60)
    maps = voxel_maps(params, s)
    grid = batched._grid(packed_copy([grid_coefs(maps, region)], "cpu")[0], s)
    c = torch.arange(s, dtype=torch.float64) - (s - 1) / 2
    cc = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1)                       # (S, S, S, 3)
    for k, axis in enumerate((2, 1, 0)):
        x = torch.einsum("vj,dhwj->vdhw", maps.a[:, axis], cc) + maps.beta[:, axis, None, None, None]
        x = torch.maximum(torch.minimum(x, maps.hi[:, axis, None, None, None]), maps.lo[:, axis, None, None, None])
        want = (2 * x + 1) / region[axis] - 1
        assert torch.allclose(grid[..., k].double(), want, rtol=0, atol=1e-5)


def test_views_from_the_packed_parameters_equal_the_self_made_ones(batch):
    """The device path's consumers given the packed parts (what apply_views does on a GPU)
    compute exactly what they compute from their own copies."""
    image, groups = batch
    params = [p for g in groups for p in g]
    s, sources = CFG.view_size, [image] * len(groups)
    for method in ("composed", "two-stage-3d"):
        coefs = packed_copy([_geometry_coefs(groups, s, method, torch.device("cpu"))], "cpu")[0]
        own = resample_views(sources, groups, s, "cpu", method=method)
        assert torch.equal(resample_views(sources, groups, s, "cpu", method=method, coefs=coefs), own)
    x = resample_views(sources, groups, s, "cpu", method="composed")
    own = intensity_views(x.clone(), params, fused=False)
    packed = packed_copy(intensity_parts(params), "cpu")
    assert torch.equal(intensity_views(x.clone(), params, fused=False, parts=packed), own)


def test_apply_views_makes_one_transfer_per_batch(batch, monkeypatch):
    image, groups = batch
    calls = []

    def spy(parts, device):
        calls.append(len(parts))
        return to_device(parts, device)

    monkeypatch.setattr(batched, "to_device", spy)
    monkeypatch.setattr(intensity, "to_device", spy)
    for method, n in (("composed", [1]), ("two-stage-3d", [1]), ("two-stage", [0])):
        calls.clear()
        apply_views([image] * len(groups), groups, CFG.view_size, "cpu", method=method)
        assert calls == n, method   # on the CPU only the grid travels; the fused intensity needs nothing
