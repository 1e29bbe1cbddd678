"""Datasets and loaders over a prepared split: samples, bad images, worker memory, loaders."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from atss_cli.data import (BadTargetsError, CorruptImagesError, TestDataset, TrainDataset, build_test_loader,
                           build_train_loader, generate_synthetic, load_split)
from atss_cli.data.transforms import MEAN, STD

SCALE = (64, 48)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    generate_synthetic(root, train_images=24, val_images=6, seed=1, size=96)
    return root


@pytest.fixture
def coco(syn, tmp_path):
    """A private copy that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(syn, dst, ignore=shutil.ignore_patterns(".atss_cache"))
    return dst


def test_sample_matches_the_cache(syn):
    cache = load_split(syn, "train2017")
    ds = TrainDataset(cache, scale=SCALE, flip_prob=0.0)
    pos = next(j for j in range(len(ds)) if cache.boxes(int(ds.indices[j])).shape[0] >= 2)
    idx = int(ds.indices[pos])
    s = ds[pos]
    h0, w0 = int(cache.heights[idx]), int(cache.widths[idx])
    h, w = s["img_shape"]
    assert s["ori_shape"] == (h0, w0) and s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
    assert max(h, w) <= 64 and min(h, w) <= 48 and (max(h, w) == 64 or min(h, w) == 48)
    assert s["scale_factor"] == pytest.approx((w / w0, h / h0))
    sx, sy = s["scale_factor"]
    expected = cache.boxes(idx) * np.array([sx, sy, sx, sy], dtype=np.float32)
    expected[:, 0::2] = expected[:, 0::2].clip(0, w)
    expected[:, 1::2] = expected[:, 1::2].clip(0, h)
    np.testing.assert_allclose(s["boxes"].numpy(), expected, rtol=1e-6)
    assert torch.equal(s["labels"], torch.from_numpy(cache.labels(idx)))
    assert s["image_id"] == int(cache.image_ids[idx]) and s["flipped"] is False and s["skipped"] == []
    # Normalised: de-normalising gives uint8-valued pixels.
    raw = s["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(raw, raw.round(), atol=1e-3)

    f = TrainDataset(cache, scale=SCALE, flip_prob=1.0)[pos]
    assert f["flipped"] is True and torch.equal(f["image"], s["image"].flip(-1))
    np.testing.assert_allclose(f["boxes"][:, [0, 2]].numpy(), (w - s["boxes"][:, [2, 0]]).numpy(), rtol=1e-6)


def test_flip_depends_only_on_the_augmentation_seed(syn):
    ds = TrainDataset(load_split(syn, "train2017"), scale=SCALE)
    flips = [ds[(3, seed)]["flipped"] for seed in range(40)]
    assert flips == [ds[(3, seed)]["flipped"] for seed in range(40)]
    assert 5 < sum(flips) < 35


def test_bad_training_image_is_replaced_and_counted(coco):
    cache = load_split(coco, "train2017")
    ds = TrainDataset(cache, scale=SCALE, max_corrupt=1)
    bad = cache.file_name(int(ds.indices[2]))
    (cache.image_dir / bad).write_bytes(b"not an image")
    s = ds[(2, 0)]
    assert s["skipped"] == [bad] and s["index"] == int(ds.indices[3])   # the next training image
    assert ds[(2, 5)]["index"] == int(ds.indices[3])                      # deterministic
    second = cache.file_name(int(ds.indices[7]))
    (cache.image_dir / second).unlink()
    with pytest.raises(CorruptImagesError, match=rf"2 missing, undecodable or wrongly sized .*limit 1.*{bad}"):
        ds[7]


def test_bad_test_image_is_an_error_naming_it(coco):
    cache = load_split(coco, "val2017")
    (cache.image_dir / cache.file_name(1)).write_bytes(b"\x89PNG broken")
    ds = TestDataset(cache, scale=SCALE)
    ds[0]
    with pytest.raises(CorruptImagesError, match=cache.file_name(1)):
        ds[1]
    # The same error from a loader worker is still one line.
    batches = iter(build_test_loader(cache, workers=1, scale=SCALE))
    message = None
    try:
        list(batches)
    except CorruptImagesError as exc:
        message = str(exc)
    batches._shutdown_workers()  # now, not when a later test collects the iterator
    assert message is not None and "\n" not in message and cache.file_name(1) in message


@pytest.mark.parametrize("damage, needle", [
    ("label", r"label 4 is not in 0\.\.3"),
    ("negative", r"label -1 is not in 0\.\.3"),
    ("box", r"box \[.*nan.*\] is not finite"),
    ("count", r"labels must be int64 \[\d+\] \(one per box\), got torch.int64 \[\d+\]"),
])
def test_bad_targets_fail_where_the_sample_is_built(syn, monkeypatch, damage, needle):
    """The model trusts the loader's targets (no device read-back): the dataset checks them, and
    the error names the image in one line, from a loader worker too."""
    from atss_cli.data.cache import CocoCache

    cache = load_split(syn, "train2017")
    boxes, labels = CocoCache.boxes, CocoCache.labels

    def bad_labels(self, i):
        out = labels(self, i).copy()
        if damage == "count":
            return out[:-1]
        if damage in ("label", "negative") and len(out):
            out[-1] = 4 if damage == "label" else -1
        return out

    def bad_boxes(self, i):
        out = boxes(self, i).copy()
        if damage == "box" and len(out):
            out[0, 1] = np.nan
        return out

    monkeypatch.setattr(CocoCache, "labels", bad_labels)
    monkeypatch.setattr(CocoCache, "boxes", bad_boxes)
    ds = TrainDataset(cache, scale=SCALE)
    pos = next(j for j in range(len(ds)) if len(labels(cache, int(ds.indices[j]))))
    with pytest.raises(BadTargetsError, match=rf"^image {cache.file_name(int(ds.indices[pos]))}: {needle}$"):
        ds[(pos, 0)]
    loader, sampler = build_train_loader(cache, batch_per_rank=2, workers=1, scale=SCALE)
    batches = iter(loader)
    message = None
    try:
        list(batches)
    except BadTargetsError as exc:
        message = str(exc)
    batches._shutdown_workers()
    assert message is not None and "\n" not in message and message.startswith("image "), message


def _python_containers(obj, seen=None, depth=0):
    """Lengths of every list/tuple/dict/set reachable through instance attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return []
    seen.add(id(obj))
    out = []
    if isinstance(obj, (list, tuple, dict, set)):
        out.append(len(obj))
        items = obj.values() if isinstance(obj, dict) else obj
        for v in items:
            out += _python_containers(v, seen, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (np.ndarray, type)):
        for v in vars(obj).values():  # the attributes themselves, not the attribute dict
            out += _python_containers(v, seen, depth + 1)
    return out


def test_workers_hold_no_per_image_python_objects(syn):
    cache = load_split(syn, "train2017")
    for ds in (TrainDataset(cache, scale=SCALE), TestDataset(load_split(syn, "val2017"), scale=SCALE)):
        sizes = _python_containers(ds)
        assert max(sizes) < 16, sizes           # summary numbers and categories only, nothing per image (24 images)
        blob = pickle.dumps(ds)                 # what a spawned worker receives
        assert len(blob) < 4096, len(blob)
        assert isinstance(pickle.loads(blob).cache._boxes, np.memmap)


def test_train_loader_epoch(syn):
    cache = load_split(syn, "train2017")
    loader, sampler = build_train_loader(cache, batch_per_rank=2, workers=0, scale=SCALE, seed=4)
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(sampler) == len(loader)
    seen = Counter()
    for i, b in enumerate(batches):
        assert b["images"].shape[0] == 2 or (i == len(batches) - 1 and b["images"].shape[0] == 1)  # last may be short
        assert b["images"].shape[2] % 32 == 0 and b["images"].shape[3] % 32 == 0
        for t in b["targets"]:
            assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
            assert t["boxes"].shape[0] == t["labels"].shape[0]
            h, w = t["img_shape"]
            assert (t["boxes"][:, 2] <= w).all() and (t["boxes"][:, 3] <= h).all()
        seen.update(b["indices"])
    assert set(seen.values()) == {1} and set(seen) == set(cache.train_indices().tolist())  # every image once


def test_train_loader_with_workers_matches_workers_0(syn):
    cache = load_split(syn, "train2017")
    out = []
    for workers in (0, 2):
        loader, sampler = build_train_loader(cache, batch_per_rank=2, workers=workers, scale=SCALE, seed=4)
        sampler.load_state_dict({"epoch": 1, "step": 2})
        out.append([(b["indices"], b["flipped"], b["images"].sum().item()) for b in loader])
    assert out[0] == out[1] and len(out[0]) == len(sampler) - 2


def test_persistent_workers_follow_the_engine_loop(syn):
    """The engine's pattern: load_state_dict then iter(loader) each epoch, an epoch cut short."""
    cache = load_split(syn, "train2017")
    ref_loader, ref_sampler = build_train_loader(cache, batch_per_rank=2, workers=0, scale=SCALE, seed=4)
    ref_sampler.set_epoch(1)
    expected = [b["indices"] for b in ref_loader]
    loader, sampler = build_train_loader(cache, batch_per_rank=2, workers=2, scale=SCALE, seed=4)
    sampler.load_state_dict({"epoch": 0, "step": 0})
    batches = iter(loader)
    next(batches), next(batches)                  # stop early (max_iters), prefetched batches pending
    sampler.load_state_dict({"epoch": 1, "step": 0})
    assert [b["indices"] for b in loader] == expected
    sampler.load_state_dict({"epoch": 1, "step": 3})
    assert [b["indices"] for b in loader] == expected[3:]
    loader._iterator._shutdown_workers()


def test_test_loader_two_ranks_cover_the_split(syn):
    cache = load_split(syn, "val2017")
    ids = []
    for rank in range(2):
        for b in build_test_loader(cache, batch_size=2, world_size=2, rank=rank, workers=0, scale=SCALE):
            ids += [t["image_id"] for t in b["targets"]]
    assert ids == cache.image_ids.tolist()
