"""The batched data path: the cohort held once, every placement the same views, workers that
only sample parameters and read bytes, and the same parameters as the MONAI path."""

import numpy as np
import pytest
import torch

from medcl.augment import sample_pair, sample_views
from medcl.config import AugmentConfig, load_config
from medcl.validate import load_checked
from medcl.data.cohort import Cohort
from medcl.data.ingest import write_manifest
from medcl.train.batched_pairs import BatchedPairs, ParamDrawer
from medcl.train.data import make_pair_source
from medcl.train.monai_pairs import MonaiPairs
from medcl.train.pairs import epoch_batches, load_scans, rank_shards
from medcl.train.store import VolumeStore, cache_files, choose_placement

CFG = AugmentConfig(view_size=16)


@pytest.fixture(scope="module")
def cohort(mni_scan, tmp_path_factory) -> Cohort:
    """Eight scans of different shapes (trimmed, flipped, rescaled MNI at 3 mm) in cache format."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "arrays").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        lo = rng.integers(0, 3, 3)
        hi = np.array(mni_scan.image.shape) - rng.integers(0, 3, 3)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        img, mask = mni_scan.image[box] * rng.uniform(0.8, 1.2), mni_scan.mask[box]
        if i % 2:
            img, mask = img[::-1].copy(), mask[::-1].copy()
        key = f"scan-{i:04d}"
        np.save(root / "arrays" / f"{key}.npy", img.astype(np.float16))
        np.save(root / "arrays" / f"{key}.mask.npy", mask.astype(np.uint8))
        rows.append({"scan_key": key, "subject_key": f"sub-{i:04d}", "label": ["a", "b", ""][i % 3],
                     "split": "train", "shape": "x".join(map(str, img.shape)), "spacing": 3.0, "source_sha256": "-"})
    write_manifest(root, rows)
    return Cohort.load(root)


def _run(pairs: BatchedPairs, shards, epoch=0):
    out = [(v1.clone(), v2.clone(), y.clone(), pairs.history) for v1, v2, y in pairs.batches(shards, epoch)]
    return out


def test_placement_choice():
    cpu, huge = torch.device("cpu"), 1 << 60
    assert choose_placement("auto", 1 << 20, cpu) == "host"
    assert choose_placement("auto", huge, cpu) == "stream"
    assert choose_placement("device", 1 << 20, cpu) == "host"       # needs CUDA
    assert choose_placement("pinned", 1 << 20, cpu) == "host"
    assert choose_placement("stream", 1 << 20, cpu) == "stream"
    with pytest.raises(ValueError, match="augment.cache"):
        choose_placement("gpu", 1, cpu)
    with pytest.raises(Exception, match="augment.cache"):
        load_checked(overrides=["augment.cache=gpu"])
    with pytest.raises(Exception, match="augment.backend"):
        load_checked(overrides=["augment.backend=dali"])


def test_store_holds_the_cache_exactly_once(cohort):
    images, _ = cache_files(cohort)
    arrays = [np.load(f) for f in images]
    store = VolumeStore.from_arrays(arrays, "host", torch.device("cpu"))
    assert store.flat.dtype == torch.float16 and store.nbytes == sum(a.nbytes for a in arrays)
    for a, v in zip(arrays, store.volumes):
        assert v.shape == a.shape and np.array_equal(v.numpy(), a)
        assert v.untyped_storage().data_ptr() == store.flat.untyped_storage().data_ptr()


def test_same_parameters_as_the_monai_path(cohort):
    """Per (seed, epoch, scan) both backends draw the same view parameters."""
    pairs = BatchedPairs.from_cohort(cohort, CFG, seed=3)
    shards = epoch_batches(len(cohort), 4, seed=3, epoch=2)
    for *_, job in _run(pairs, shards, epoch=2):
        for i, pair in zip(job.indices, job.pairs):
            assert pair == sample_pair(np.random.default_rng([3, 2, i]), cohort.mask(i), CFG)


def test_every_placement_and_worker_count_gives_the_same_views(cohort):
    shards = epoch_batches(len(cohort), 4, seed=0, epoch=1)
    ref = _run(BatchedPairs.from_cohort(cohort, CFG, placement="host"), shards, epoch=1)
    for placement, workers, kind in (("stream", 0, "thread"), ("host", 2, "thread"), ("stream", 2, "thread"),
                                     ("host", 2, "process"), ("stream", 2, "process")):
        pairs = BatchedPairs.from_cohort(cohort, CFG, num_workers=workers, placement=placement, worker_kind=kind)
        assert pairs.placement == placement and (pairs.store is None) == (placement == "stream")
        got = _run(pairs, shards, epoch=1)
        assert len(got) == len(ref) == 2
        for (a1, a2, ay, aj), (b1, b2, by, bj) in zip(ref, got):
            assert aj.indices == bj.indices and aj.pairs == bj.pairs and torch.equal(ay, by)
            assert torch.allclose(a1, b1, atol=1e-4) and torch.allclose(a2, b2, atol=1e-4)
        pairs.close()


def test_views_labels_and_epochs(cohort):
    pairs = BatchedPairs.from_cohort(cohort, CFG, seed=0)
    shards = epoch_batches(len(cohort), 4, seed=0, epoch=0)
    (v1, v2, y, job), _ = _run(pairs, shards, epoch=0)
    assert v1.shape == v2.shape == (4, 1, 16, 16, 16) and not torch.allclose(v1, v2)
    names = ["a", "b"]
    assert y.tolist() == [names.index(cohort.rows[i]["label"]) if cohort.rows[i]["label"] else -1 for i in job.indices]
    (w1, *_), _ = _run(pairs, shards, epoch=1)
    assert not torch.allclose(v1, w1)                       # another epoch, other views


def test_workers_read_masks_not_images(cohort):
    """What a worker returns: parameters, and only in stream mode the crop regions (fp16)."""
    images, masks = cache_files(cohort)
    resident = ParamDrawer(CFG, 0, mask_files=masks)[(0, [0, 1])]
    assert resident.regions is None and len(resident.pairs) == 2
    streamed = ParamDrawer(CFG, 0, mask_files=masks, image_files=images)[(0, [0, 1])]
    for region, origin, pair in zip(streamed.regions, streamed.origins, streamed.pairs):
        assert region.dtype == torch.float16
        for p in pair:   # the region holds both crops and no more
            assert all(origin[a] <= p.crop_start[a] and p.crop_start[a] + p.crop_size[a] <= origin[a] + region.shape[a]
                       for a in range(3))
        assert region.numel() < np.load(images[streamed.indices[0]], mmap_mode="r").size * 1.01


def test_loop_source_holds_the_cohort_once(cohort):
    """The loop's batched source: views from one store, into which the scans read by
    load_scans were moved (each array becomes a view of the store: no second copy)."""
    cfg = load_config(overrides=["augment.view_size=16"])
    images, masks = load_scans(cohort)
    pairs = BatchedPairs.from_arrays(images, masks, cohort.label_ids(), cfg.augment, seed=0)
    shards = epoch_batches(len(cohort), 4, seed=0, epoch=0)
    out = list(pairs.batches(shards, 0))
    assert len(out) == 2 and out[0][0].shape == (4, 1, 16, 16, 16)
    assert all(np.shares_memory(a, pairs.store.flat.numpy()) for a in images)
    again = list(pairs.batches(shards, 0))
    assert torch.equal(out[0][0], again[0][0])
    loop = make_pair_source(cohort, cfg, torch.device("cpu"))     # what the loop builds: the same views
    assert isinstance(loop, BatchedPairs) and loop.placement == "host"
    for (a1, a2, ay), (b1, b2, by) in zip(out, loop.batches(shards, 0)):
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(ay, by)
    loop.close()


def test_monai_source_same_labels_and_parameters(cohort):
    """augment.backend=monai: per-sample MONAI views, the same label ids and, per (seed, epoch,
    scan), views within float rounding of the batched source's (the same parameters)."""
    cfg = load_config(overrides=["augment.view_size=16", "augment.backend=monai", "train.num_workers=0"])
    source = make_pair_source(cohort, cfg, torch.device("cpu"))
    assert isinstance(source, MonaiPairs)
    shards = epoch_batches(len(cohort), 4, seed=0, epoch=1)
    batched = BatchedPairs.from_cohort(cohort, cfg.augment, seed=0)
    for (m1, m2, my), (b1, b2, by) in zip(source.batches(shards, 1), batched.batches(shards, 1)):
        assert m1.shape == b1.shape == (4, 1, 16, 16, 16) and m1.dtype == torch.float32
        assert my.tolist() == by.tolist() == [cohort.label_ids()[i] for i in batched.history.indices]
        assert float((m1 - b1).abs().mean()) < 0.05 and float((m2 - b2).abs().mean()) < 0.05


def test_label_ids_and_rank_shards(cohort):
    assert cohort.label_ids() == [{"a": 0, "b": 1, "": -1}[r["label"]] for r in cohort.rows]
    batches = epoch_batches(8, 4, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    halves = [rank_shards(batches, r, 2) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == batches      # gathered in rank order: the global batch


def test_thread_workers_start_no_process_and_keep_order(cohort):
    """Thread workers: no child process, batches in the sampler's order over several epochs
    (prefetch runs ahead of the consumer), the pool reused across epochs and stopped by close()."""
    import threading

    import psutil

    before = set(psutil.Process().children(recursive=True))
    pairs = BatchedPairs.from_cohort(cohort, CFG, num_workers=2, worker_kind="thread")
    for epoch in range(3):
        shards = [[i % len(cohort), (i + 1) % len(cohort)] for i in range(epoch, epoch + 11)]
        got = _run(pairs, shards, epoch=epoch)
        assert [j.indices for *_, j in got] == shards
        assert set(psutil.Process().children(recursive=True)) == before
    assert any(t.name.startswith("medcl-jobs") for t in threading.enumerate())
    pairs.close()
    assert not any(t.name.startswith("medcl-jobs") and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="train.worker_kind"):
        BatchedPairs.from_cohort(cohort, CFG, worker_kind="fibre")


def test_local_views_from_both_backends_and_every_placement(cohort):
    """Multi-crop: the fourth entry of a batch, the same parameters per (seed, epoch, scan) from
    either backend, the same views from a streamed placement, and within float rounding of the
    MONAI path's."""
    cfg = load_config(overrides=["augment.view_size=16", "augment.local_views=2", "augment.local_size=8",
                                 "augment.backend=monai", "train.num_workers=0"])
    shards = epoch_batches(len(cohort), 4, seed=0, epoch=1)
    host = BatchedPairs.from_cohort(cohort, cfg.augment, placement="host")
    stream = BatchedPairs.from_cohort(cohort, cfg.augment, placement="stream")
    monai = make_pair_source(cohort, cfg, torch.device("cpu"))
    for (m1, m2, my, ml), (h1, h2, hy, hl), (s1, s2, sy, sl) in zip(
            monai.batches(shards, 1), host.batches(shards, 1), stream.batches(shards, 1)):
        assert ml.shape == hl.shape == sl.shape == (4, 2, 1, 8, 8, 8) and h1.shape == (4, 1, 16, 16, 16)
        assert torch.allclose(hl, sl, atol=1e-4) and torch.equal(my, hy)
        for b, (i, views) in enumerate(zip(host.history.indices, host.history.pairs)):
            assert views == sample_views(np.random.default_rng([0, 1, i]), cohort.mask(i), cfg.augment)
            assert not torch.allclose(hl[b, 0], hl[b, 1])
        assert float((ml - hl).abs().max()) < 1e-3 and float((m1 - h1).abs().max()) < 1e-3
