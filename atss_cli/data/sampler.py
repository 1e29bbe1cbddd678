"""Batch samplers: global aspect-ratio-grouped batches for training, disjoint shares for testing.

GroupedGlobalBatchSampler
    Epoch e walks a permutation seeded by (seed, e). Like MMDetection's AspectRatioBatchSampler,
    each image drops into the bucket of its group (landscape: w >= h, or portrait) and a bucket
    that reaches `total_batch` images becomes the next *global* batch. Rank r of `world_size`
    takes the contiguous slice [r * b, (r + 1) * b) of every global batch, b = total_batch /
    world_size. The global batches depend on (seed, epoch, total_batch) only, so 1 process with
    batch 2 and 2 processes with batch 1 see the same images at the same steps.

    Epoch end, as MMDetection's AspectRatioBatchSampler: with drop_last=False (default, its
    default) the fewer than `total_batch` images left in each bucket are joined (the portrait
    bucket's, then the landscape bucket's, each in the order they arrived) and cut into global
    batches of `total_batch` after the grouped ones, the last one smaller (never filled up with
    images seen before): every image is used exactly once per epoch, and
    len = ceil(n / total_batch). With drop_last=True (the rule before it) the leftovers are not
    used this epoch (at most 2 * (total_batch - 1) images, different ones each epoch).

    A short last global batch of s images splits as every batch does: rank r takes positions
    [r * b, (r + 1) * b) of it, so the first ceil(s / b) ranks get images (rank 0 always) and
    the others an empty list; the training step still runs every collective on such a rank
    (its loss is zero), so the summed gradient is that of the s images whatever the world size.

    Each element is a pair (dataset position, augmentation seed); the datasets of this package
    draw the flip from that seed, so flips too are independent of processes and resumes.

    len(sampler) = steps per epoch (identical on every rank). Position: `set_epoch(e)` starts
    epoch e at step 0; `set_position(e, s)` / `load_state_dict({"epoch": e, "step": s})` make
    the next iteration start at step s of epoch e, yielding exactly what an uninterrupted
    iteration yields from step s on (a following `set_epoch(e)` with the same e keeps it).
    `state_dict()` is {"epoch", "step"} of the next batch the sampler will produce; a DataLoader
    with workers prefetches, so a training loop should checkpoint its own count of consumed steps.

TestShardSampler
    Rank r takes the contiguous share [r * n // W, (r + 1) * n // W) of the n images, in order,
    in batches of `batch_size`: every image is evaluated exactly once, with no padding
    duplicates (shares differ by at most one image, so ranks may take different step counts).
"""

from __future__ import annotations

import numpy as np

from atss_cli.errors import AtssError


class GroupedGlobalBatchSampler:
    def __init__(self, landscape, total_batch: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        self.flags = np.asarray(landscape, dtype=bool)
        if total_batch < 1 or world_size < 1 or total_batch % world_size:
            raise AtssError(f"total batch {total_batch} must be a positive multiple of the world size {world_size}")
        if not 0 <= rank < world_size:
            raise AtssError(f"rank {rank} outside world size {world_size}")
        self.total_batch, self.world_size, self.rank = int(total_batch), int(world_size), int(rank)
        self.per_rank = self.total_batch // self.world_size
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.epoch, self._start, self._pending, self._next = 0, 0, False, 0

    # --- position
    def set_epoch(self, epoch: int) -> None:
        if self._pending and epoch == self.epoch:
            return  # keep the step of a set_position for this epoch
        self.epoch, self._start, self._pending, self._next = int(epoch), 0, False, 0

    def set_position(self, epoch: int, step: int) -> None:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.epoch, self._start, self._pending, self._next = int(epoch), int(step), True, int(step)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self._next}

    def load_state_dict(self, state: dict) -> None:
        self.set_position(int(state["epoch"]), int(state["step"]))

    # --- the plan of an epoch
    def __len__(self) -> int:
        n1 = int(self.flags.sum())
        n0 = len(self.flags) - n1
        steps = n0 // self.total_batch + n1 // self.total_batch
        if not self.drop_last:
            steps += -(-(n0 % self.total_batch + n1 % self.total_batch) // self.total_batch)
        return steps

    def global_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64 [steps, total_batch], augmentation seeds int64 [steps, total_batch]);
        a short last batch is padded with position -1 (seed -1)."""
        b, n = self.total_batch, len(self.flags)
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(n)
        aug = rng.integers(0, 2**62, size=n)
        batches, done_at, leftovers = [], [], []
        when = np.empty(n, dtype=np.int64)
        when[perm] = np.arange(n)
        for g in (False, True):  # MMDetection's bucket 0 (portrait, w < h), then 1 (landscape)
            members = perm[self.flags[perm] == g]
            k = len(members) // b
            full = members[:k * b].reshape(k, b)
            batches.append(full)
            done_at.append(when[full[:, -1]] if k else np.zeros(0, dtype=np.int64))
            leftovers.append(members[k * b:])
        order = np.argsort(np.concatenate(done_at), kind="stable")  # the order buckets fill up
        plan = np.concatenate(batches)[order] if order.size else np.zeros((0, b), dtype=np.int64)
        if not self.drop_last:
            rest = np.concatenate(leftovers)  # portrait leftovers, then landscape, as MMDetection joins them
            if rest.size:
                rest = np.concatenate([rest, np.full((-rest.size) % b, -1, dtype=rest.dtype)])
                plan = np.concatenate([plan, rest.reshape(-1, b)])
        plan = plan.astype(np.int64).reshape(-1, b)
        return plan, np.where(plan >= 0, aug[plan], -1)

    def __iter__(self):
        epoch, start = self.epoch, self._start
        self._start, self._pending = 0, False  # a later iteration without set_position starts at 0
        plan, seeds = self.global_batches(epoch)
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for step in range(start, len(plan)):
            self._next = step + 1
            yield [(int(p), int(s)) for p, s in zip(plan[step, lo:hi], seeds[step, lo:hi]) if p >= 0]


class TestShardSampler:
    __test__ = False  # a name pytest would otherwise try to collect

    def __init__(self, num_images: int, batch_size: int = 1, *, world_size: int = 1, rank: int = 0):
        if batch_size < 1:
            raise AtssError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise AtssError(f"rank {rank} outside world size {world_size}")
        self.begin = rank * num_images // world_size
        self.end = (rank + 1) * num_images // world_size
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return -(-(self.end - self.begin) // self.batch_size)

    def __iter__(self):
        for s in range(self.begin, self.end, self.batch_size):
            yield list(range(s, min(s + self.batch_size, self.end)))
