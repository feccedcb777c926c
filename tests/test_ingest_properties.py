"""Anything ingest accepts trains, evaluates and predicts (issue 13 item 3).

Property tests (hypothesis) over shapes, voxel sizes, foregrounds (thin, tiny, touching the
border, hollow) and intensity ranges: ``preprocess`` either refuses a scan with a one-line
:class:`IngestError` or gives a scan whose views the sampler draws and both view paths (MONAI
per view, batched torch) and the evaluation view make, finite. A small cohort of such edge
scans then goes through ``medcl ingest``, one ``medcl pretrain`` epoch, the
few-shot embedding and ``medcl predict``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcl.augment.batched import apply_pairs
from medcl.augment.params import identity_view, sample_pair
from medcl.augment.views import apply_view, eval_view
from medcl.config import AugmentConfig, DataConfig
from medcl.data.errors import IngestError
from medcl.data.ingest import MIN_FOREGROUND_EDGE, preprocess

VIEW = 8
AUG = AugmentConfig(view_size=VIEW, max_tries=5)
FAST = settings(max_examples=25, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def foreground(kind: str, shape: tuple[int, int, int], box: tuple, rng: np.random.Generator) -> np.ndarray:
    """A tissue mask of ``kind``: a box (any thickness, possibly at the border), a hollow
    sphere, or a few scattered voxels."""
    m = np.zeros(shape, bool)
    if kind == "box":
        m[tuple(slice(lo, lo + n) for lo, n in box)] = True
    elif kind == "shell":
        g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
        r = np.sqrt((g ** 2).sum(0))
        m = (r > 0.6) & (r < 0.9)
    else:
        m[tuple(rng.integers(0, n, 12) for n in shape)] = True
    return m


@st.composite
def scans(draw):
    shape = tuple(draw(st.integers(4, 32)) for _ in range(3))
    spacing = tuple(draw(st.sampled_from([0.5, 1.0, 1.5, 2.5, 4.0, 6.0])) for _ in range(3))
    box = tuple((draw(st.integers(0, n - 1)), draw(st.integers(1, n))) for n in shape)
    kind = draw(st.sampled_from(["box", "box", "shell", "dots"]))
    offset = draw(st.sampled_from([0.0, -1024.0, 3000.0, -5e4]))
    scale = draw(st.sampled_from([1e-3, 1.0, 255.0, 4095.0, 1e5]))
    seed = draw(st.integers(0, 2**16))
    integer = draw(st.booleans())
    rng = np.random.default_rng(seed)
    mask = foreground(kind, shape, box, rng)
    data = offset + scale * (mask * (0.6 + 0.4 * rng.random(shape)) + 0.02 * rng.random(shape))
    if integer:
        data = np.round(data)
    return data.astype(np.float32), np.diag([*spacing, 1.0])


def _one_line_or_views(data: np.ndarray, affine: np.ndarray, cfg: DataConfig):
    try:
        pre = preprocess(data, affine, cfg)
    except IngestError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert np.isfinite(pre.image).all() and pre.mask.any()
    ev = identity_view(pre.mask)
    assert min(ev.crop_size) >= MIN_FOREGROUND_EDGE
    return pre


@pytest.fixture(scope="module")
def warm():
    """Compile the batched path's numba kernels once, outside the timed examples."""
    mask = np.ones((8, 8, 8), bool)
    apply_pairs([torch.ones(8, 8, 8)], [sample_pair(np.random.default_rng(0), mask, AUG)], VIEW, device="cpu")


@FAST
@given(scan=scans(), target=st.sampled_from([2.0, 3.0, 4.0]), seed=st.integers(0, 1000))
def test_what_preprocess_accepts_gives_finite_views_on_every_path(warm, scan, target, seed):
    pre = _one_line_or_views(*scan, DataConfig(spacing=target))
    if pre is None:
        return
    p1, p2 = sample_pair(np.random.default_rng(seed), pre.mask, AUG)
    for p in (p1, p2):
        assert all(1 <= n for n in p.crop_size)
        v = apply_view(pre.image, p, VIEW)
        assert v.shape == (1, VIEW, VIEW, VIEW) and torch.isfinite(v).all()
    a, b = apply_pairs([torch.as_tensor(pre.image)], [(p1, p2)], VIEW, device="cpu")
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    e = eval_view(pre.image, pre.mask, VIEW)
    assert e.shape == (1, VIEW, VIEW, VIEW) and torch.isfinite(e).all()


@FAST
@given(extent=st.tuples(*[st.integers(1, 6)] * 3), at=st.tuples(*[st.integers(0, 3)] * 3), seed=st.integers(0, 999))
def test_the_sampler_never_fails_on_a_degenerate_box(extent, at, seed):
    """A cohort made before ingest refused thin foregrounds may hold a box under 4 voxels: the
    sampler gives crops inside it (it raised ``ValueError: high <= 0`` before)."""
    mask = np.zeros((10, 10, 10), bool)
    mask[tuple(slice(a, a + e) for a, e in zip(at, extent))] = True
    for p in sample_pair(np.random.default_rng(seed), mask, AUG):
        assert all(s >= a and s + n <= a + e for s, n, a, e in zip(p.crop_start, p.crop_size, at, extent))
        assert torch.isfinite(apply_view(mask.astype(np.float32), p, VIEW)).all()


# --- a cohort of edge scans through the commands ------------------------------------------------

def edge_scans() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scans at the edge of what serves, at 4 mm (the tiny model's spacing): a slab just thick
    enough, a tiny cube, a head touching two borders, a hollow shell, a big-range CT-like scan."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape, box in [("slab", (24, 24, 24), (slice(2, 22), slice(2, 22), slice(10, 15))),
                             ("tiny", (20, 20, 20), (slice(8, 13), slice(8, 13), slice(8, 13))),
                             ("border", (20, 24, 18), (slice(0, 14), slice(10, 24), slice(0, 18)))]:
        d = np.zeros(shape, np.float32)
        d[box] = 100 + 20 * rng.random(d[box].shape)
        out[name] = (d, np.diag([4.0, 4, 4, 1]))
    shell = foreground("shell", (28, 28, 28), (), rng)
    out["shell"] = ((shell * (80 + 10 * rng.random(shell.shape))).astype(np.float32), np.diag([4.0, 4, 4, 1]))
    ct = -1024 + 2000 * foreground("shell", (22, 22, 22), (), rng) + rng.random((22, 22, 22))
    out["ct"] = (ct.astype(np.float32), np.diag([4.0, 4, 4, 1]))
    return out


TINY = ["augment.view_size=16", "model.arch=resnet10", "model.widen_factor=0.125", "model.proj_hidden=32",
        "model.proj_dim=16", "train.epochs=1", "train.batch_size=5", "train.num_workers=0", "data.spacing=4"]


@pytest.fixture(scope="module")
def edge_cohort(tmp_path_factory):
    from medcl.cli import main

    tmp = tmp_path_factory.mktemp("edge")
    for name, (d, aff) in edge_scans().items():
        nib.save(nib.Nifti1Image(d, aff), str(tmp / f"sub-{name}_T1w.nii.gz"))
    assert main(["ingest", str(tmp), "data.spacing=4", "data.workers=1", "--out", str(tmp / "cohort"), "--quiet"]) == 0
    return tmp


def test_edge_cohort_ingests_whole(edge_cohort):
    counts = json.loads((edge_cohort / "cohort" / "ingest.json").read_text())["counts"]
    assert counts["ingested"] == len(edge_scans()) and counts["quarantined"] == 0


def test_edge_cohort_pretrains_one_epoch(edge_cohort, tmp_path, capsys):
    """One epoch (one step of all five scans) on the default batched backend; the MONAI path
    draws the same ViewParams and is held to the same scans by the property test above."""
    from medcl.cli import main

    out = tmp_path / "pre"
    rc = main(["pretrain", "--cohort", str(edge_cohort / "cohort"), "--out", str(out), "--quiet",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])


def test_edge_cohort_embeds_and_predicts(edge_cohort, registered_models, tmp_path, capsys):
    """The evaluation view of every cached scan embeds, and ``medcl predict`` answers every
    edge scan (the registered tiny few-shot model works at 4 mm, as the cohort)."""
    from medcl.cli import main
    from medcl.data.cohort import Cohort
    from medcl.fewshot.embed import embed_cohort

    feats = embed_cohort(registered_models["encoder"], Cohort.load(edge_cohort / "cohort"), 16)
    assert feats.shape[0] == len(edge_scans()) and np.isfinite(feats).all()
    scans = sorted(str(p) for p in edge_cohort.glob("*.nii.gz"))
    capsys.readouterr()
    rc = main(["predict", "--tracking-uri", registered_models["uri"], "--model", "models:/medcl-fewshot@champion",
               *scans])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert len(rows) == len(scans)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
