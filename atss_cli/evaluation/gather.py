"""This process's share of inference, every rank's shares gathered, COCO result records.

    infer_packed(model, loader, device, *, amp=None, progress=None, total=None)
        -> {image_id: [K, 6] float64 rows (x, y, w, h, score, label)}, the original image frame
    gather_packed(local) -> the same over all ranks (an image two ranks saw counts once)
    packed_to_detections(packed, label_to_cat_id) -> COCO result records, by image id then score
    run_inference(model, loader, device, *, label_to_cat_id, amp=None, distributed=None,
                  progress=None) -> list[dict]
        The three above in order: with torch.distributed initialised (and `distributed` not
        False) every rank infers its share and every rank returns the same full list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from atss_cli.data.coco_results import label_lookup, pack_detections, packed_to_coco
from atss_cli.precision import autocast, unwrap_model


def dist_active(distributed: bool | None) -> bool:
    if distributed is False:
        return False
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not active:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    return active


def infer_packed(model, loader, device, *, amp: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 total: int | None = None) -> dict[int, np.ndarray]:
    """This process's share: {image_id: [K, 6] rows (x, y, w, h, score, label)}."""
    import torch

    device = torch.device(device)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    out: dict[int, np.ndarray] = {}
    if total is None:
        try:
            total = len(loader.dataset)
        except (AttributeError, TypeError):
            total = 0
    done = 0
    try:
        # no_grad, not inference_mode: tensors the model caches here (anchors) stay usable when
        # the training loop resumes after an evaluation.
        with torch.no_grad():
            for batch in loader:
                images = batch["images"].to(device, non_blocking=True)
                targets = batch["targets"]
                img_shapes = [tuple(t["img_shape"]) for t in targets]
                scale_factors = [tuple(t["scale_factor"]) for t in targets]
                with autocast(device, amp):
                    dets = net.predict(images, img_shapes, scale_factors)
                for t, d in zip(targets, dets):
                    image_id = int(t["image_id"])
                    if image_id in out:  # a padded sampler repeated it: keep the first
                        continue
                    out[image_id] = pack_detections(d["boxes"], d["scores"], d["labels"])
                done += len(targets)
                if progress is not None:
                    progress(done, total)
    finally:
        net.train(was_training)
    return out


def gather_packed(local: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """All-gather every rank's {image_id: rows}; an image seen by several ranks counts once."""
    import torch.distributed as dist

    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, local)
    merged: dict[int, np.ndarray] = {}
    for share in shares:  # rank order: the lowest rank's copy of a repeated image wins
        for image_id, rows in share.items():
            merged.setdefault(image_id, rows)
    return merged


def packed_to_detections(packed: Mapping[int, np.ndarray],
                         label_to_cat_id: Mapping[int, int] | Sequence[int]) -> list[dict]:
    """{image_id: rows} -> COCO result records, by image id then descending score."""
    table = label_lookup(label_to_cat_id)
    detections: list[dict] = []
    for image_id in sorted(packed):
        rows = packed[image_id]
        if len(rows):
            rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        detections.extend(packed_to_coco(image_id, rows, table))
    return detections


def run_inference(model, loader, device, *, label_to_cat_id: Mapping[int, int] | Sequence[int],
                  amp: str | None = None, distributed: bool | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Inference over `loader` -> COCO result records (see the module docstring)."""
    packed = infer_packed(model, loader, device, amp=amp, progress=progress)
    if dist_active(distributed):
        packed = gather_packed(packed)
    return packed_to_detections(packed, label_to_cat_id)
