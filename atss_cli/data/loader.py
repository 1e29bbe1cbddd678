"""The DataLoaders training and evaluation use: dataset + batch sampler + collate."""

from __future__ import annotations

import torch

from atss_cli.data.cache import CocoCache
from atss_cli.data.dataset import DEFAULT_SCALE, TestDataset, TrainDataset, collate
from atss_cli.data.sampler import GroupedGlobalBatchSampler, TestShardSampler


def build_train_loader(cache: CocoCache, *, batch_per_rank: int, world_size: int = 1, rank: int = 0,
                       seed: int = 0, workers: int = 2, scale: tuple[int, int] = DEFAULT_SCALE,
                       flip_prob: float = 0.5, max_corrupt: int = 100, drop_last: bool = False,
                       pin_memory: bool = False, uint8_images: bool = False):
    """(DataLoader, GroupedGlobalBatchSampler) over the training images of `cache`.

    The global batch is batch_per_rank * world_size (gradient accumulation is the engine's job).
    Workers persist across epochs; workers=0 loads in this process. `uint8_images`: batches of
    uint8 RGB images, not normalised, zero-padded, with their extents in "image_sizes", for the
    training step to normalise on its device (`transforms.normalize_padded`).
    """
    dataset = TrainDataset(cache, scale=scale, flip_prob=flip_prob, max_corrupt=max_corrupt,
                           uint8_images=uint8_images)
    sampler = GroupedGlobalBatchSampler(dataset.landscape(), batch_per_rank * world_size, world_size=world_size,
                                        rank=rank, seed=seed, drop_last=drop_last)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    return loader, sampler


def build_test_loader(cache: CocoCache, *, batch_size: int = 1, world_size: int = 1, rank: int = 0,
                      workers: int = 2, scale: tuple[int, int] = DEFAULT_SCALE, pin_memory: bool = False):
    """DataLoader over every image of `cache`; rank r gets its disjoint contiguous share, in order."""
    dataset = TestDataset(cache, scale=scale)
    sampler = TestShardSampler(len(dataset), batch_size, world_size=world_size, rank=rank)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=pin_memory)
