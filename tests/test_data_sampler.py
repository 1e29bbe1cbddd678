"""The global, aspect-grouped batch sampler and the test shard sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from atss_cli.data.sampler import GroupedGlobalBatchSampler, TestShardSampler
from atss_cli.errors import AtssError


def flags(n0: int, n1: int, seed: int = 0) -> np.ndarray:
    f = np.array([False] * n0 + [True] * n1)
    return np.random.default_rng(seed).permutation(f)


def epoch(landscape, total, world, epoch_no=0, seed=3, **kw):
    """Per step, the concatenation of every rank's batch (rank order)."""
    per_rank = []
    for r in range(world):
        s = GroupedGlobalBatchSampler(landscape, total, world_size=world, rank=r, seed=seed, **kw)
        s.set_epoch(epoch_no)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
        assert all(len(b) == total // world for b in per_rank[-1][:-1])   # only the last may be short
    return [sum((pr[i] for pr in per_rank), []) for i in range(len(per_rank[0]))]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_image_once_per_epoch_across_ranks(world):
    land = flags(24, 16)                        # both groups are multiples of the total batch 8
    for e in range(3):
        steps = epoch(land, 8, world, e)
        seen = Counter(p for b in steps for p, _ in b)
        assert sorted(seen) == list(range(40)) and set(seen.values()) == {1}
        for b in steps:                         # a global batch is one aspect group
            assert len({bool(land[p]) for p, _ in b}) == 1


def test_drop_last_true_drops_leftovers_and_never_repeats():
    land = flags(13, 10)                       # 13 % 4 = 1 and 10 % 4 = 2 images left over
    s = GroupedGlobalBatchSampler(land, 4, world_size=2, rank=0, drop_last=True)
    assert len(s) == 3 + 2
    orders = []
    for e in range(4):
        steps = epoch(land, 4, 2, e, drop_last=True)
        seen = Counter(p for b in steps for p, _ in b)
        assert set(seen.values()) == {1} and len(seen) == 23 - 3
        orders.append([p for b in steps for p, _ in b])
    assert len({tuple(o) for o in orders}) == 4      # a new permutation every epoch


def mmdet_aspect_ratio_batches(order, landscape, batch_size):
    """MMDetection 3.3.0's AspectRatioBatchSampler.__iter__ (drop_last=False, its default),
    transcribed: `order` is the sampler's permutation, bucket 0 holds w < h."""
    buckets, out = [[], []], []
    for idx in order:
        bucket = buckets[1 if landscape[idx] else 0]
        bucket.append(int(idx))
        if len(bucket) == batch_size:
            out.append(bucket[:])
            del bucket[:]
    left = buckets[0] + buckets[1]
    while left:
        out.append(left[:batch_size])
        left = left[batch_size:]
    return out


@pytest.mark.parametrize("n0, n1, batch", [(13, 10, 4), (6, 10, 4), (1, 0, 2), (5, 2, 8), (3, 3, 1), (7, 9, 3)])
def test_leftovers_joined_as_mmdetection_every_image_once(n0, n1, batch):
    land = flags(n0, n1)
    for e in range(3):
        s = GroupedGlobalBatchSampler(land, batch, seed=3)
        s.set_epoch(e)
        ours = [[p for p, _ in b] for b in s]
        perm = np.random.default_rng([3, e]).permutation(n0 + n1)
        assert ours == mmdet_aspect_ratio_batches(perm, land, batch)
        assert len(ours) == len(s) == -(-(n0 + n1) // batch)
        assert sorted(p for b in ours for p in b) == list(range(n0 + n1))


def test_sixteen_photos_two_aspects_batch_4_train_on_all_16():
    land = flags(6, 10)                        # 6 portrait, 10 landscape: 2 + 2 left over
    steps = epoch(land, 4, 1, 0)
    assert [len(b) for b in steps] == [4, 4, 4, 4]
    assert sorted(p for b in steps for p, _ in b) == list(range(16))
    assert len({bool(land[p]) for p, _ in steps[-1]}) == 2   # the joined leftovers mix both groups


@pytest.mark.parametrize("world", [2, 4])
def test_short_last_batch_splits_by_rank_slices_rank_0_first(world):
    land = flags(0, 9)                         # batch 8: one full batch, then 1 image left
    per_rank = []
    for r in range(world):
        s = GroupedGlobalBatchSampler(land, 8, world_size=world, rank=r, seed=1)
        s.set_epoch(0)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s) == 2    # every rank takes both steps, empty or not
    assert [len(pr[1]) for pr in per_rank] == [1] + [0] * (world - 1)
    assert epoch(land, 8, world, seed=1) == epoch(land, 8, 1, seed=1)   # same images and seeds as 1 process


def test_resume_inside_an_epoch_with_a_short_last_batch():
    land = flags(5, 6)
    full = list(GroupedGlobalBatchSampler(land, 4, world_size=2, rank=0, seed=2))
    for step in range(len(full) + 1):
        s = GroupedGlobalBatchSampler(land, 4, world_size=2, rank=0, seed=2)
        s.load_state_dict({"epoch": 0, "step": step})
        assert list(s) == full[step:]


def test_same_images_for_one_process_batch_2_and_two_processes_batch_1():
    land = flags(11, 9)
    for e in range(2):
        one = epoch(land, 2, 1, e)
        two = epoch(land, 2, 2, e)
        assert one == two                       # same positions and augmentation seeds, step by step


def test_resume_from_epoch_and_step_equals_continuing():
    land = flags(17, 12)
    full = list(_sampler(land, epoch_no=2))
    for step in (0, 1, 5, len(full) - 1, len(full)):
        s = GroupedGlobalBatchSampler(land, 4, world_size=2, rank=1, seed=3)
        s.load_state_dict({"epoch": 2, "step": step})
        s.set_epoch(2)                           # a loop calling set_epoch keeps the restored step
        assert list(s) == full[step:]
        assert s.state_dict() == {"epoch": 2, "step": len(full)} or step == len(full)
        assert list(s) == full                   # the next pass of the same epoch starts at 0
    s = _sampler(land, epoch_no=2)
    it = iter(s)
    for _ in range(3):
        next(it)
    assert s.state_dict() == {"epoch": 2, "step": 3}
    s.set_epoch(3)
    assert list(s) != full and s.state_dict()["epoch"] == 3


def _sampler(land, epoch_no):
    s = GroupedGlobalBatchSampler(land, 4, world_size=2, rank=1, seed=3)
    s.set_epoch(epoch_no)
    return s


def test_seed_changes_order_and_bad_arguments():
    land = flags(8, 8)
    assert epoch(land, 4, 1, seed=1) != epoch(land, 4, 1, seed=2)
    with pytest.raises(AtssError):
        GroupedGlobalBatchSampler(land, 3, world_size=2)
    with pytest.raises(AtssError):
        GroupedGlobalBatchSampler(land, 4, world_size=2, rank=2)


@pytest.mark.parametrize("n, world, batch", [(10, 3, 2), (7, 2, 1), (2, 4, 3), (50, 1, 4)])
def test_test_shards_cover_every_image_once(n, world, batch):
    seen = []
    for r in range(world):
        s = TestShardSampler(n, batch, world_size=world, rank=r)
        batches = list(s)
        assert len(batches) == len(s) and all(1 <= len(b) <= batch for b in batches)
        seen += [i for b in batches for i in b]
    assert seen == list(range(n))             # disjoint, contiguous, in order, no padding
