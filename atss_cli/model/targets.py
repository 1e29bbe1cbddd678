"""The batch's ground truth as the assignment takes it: checked on the host, padded, uploaded.

`check_targets` reads values only on the host (CPU tensors, lists, numpy arrays): the data
pipeline checks what it builds, and a caller of `model.loss` with host targets gets a one-line
error here. Targets already on a device are trusted: checking them would read the device back.
`pad_targets` reads shapes only, so the assignment path has no branch on a tensor value.
"""

from __future__ import annotations

from typing import Sequence

import torch

from atss_cli.errors import AtssError
from atss_cli.model.upload import host_tensor, host_zeros, to_device


def _on_host(t) -> bool:
    return not isinstance(t, torch.Tensor) or t.device.type == "cpu"


def check_targets(targets: Sequence[dict], num_classes: int) -> None:
    """AtssError naming the first bad target: "boxes" not [M, 4], "labels" not [M], and, for host
    values, labels outside 0..num_classes-1 or a non-finite box coordinate (one pass over the
    batch's host values; the culprit is searched for only on failure)."""
    host_boxes, host_labels = [], []
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"], t["labels"]
        if _on_host(boxes):
            boxes = torch.as_tensor(boxes, dtype=torch.float32)
            host_boxes.append((i, boxes.reshape(-1, 4) if boxes.numel() == 0 else boxes))
        if _on_host(labels):
            labels = torch.as_tensor(labels)
            host_labels.append((i, labels.reshape(-1)))
        if not (boxes.dim() == 2 and boxes.shape[1] == 4) and boxes.numel() != 0:
            raise AtssError(f"target {i}: boxes must be [M, 4], got shape {list(boxes.shape)}")
        if labels.dim() > 1:
            raise AtssError(f"target {i}: labels must be [M], got shape {list(labels.shape)}")
        if boxes.numel() // 4 != labels.numel():
            raise AtssError(f"target {i}: {boxes.numel() // 4} boxes but {labels.numel()} labels")
    labels = torch.cat([x for _, x in host_labels]) if host_labels else torch.zeros(0)
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            i, x = next((i, x) for i, x in host_labels if ((x < 0) | (x >= num_classes)).any())
            raise AtssError(f"target {i}: labels must be in 0..{num_classes - 1}, got {x.tolist()}")
    boxes = torch.cat([x for _, x in host_boxes]) if host_boxes else torch.zeros(0, 4)
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        i, x = next((i, x) for i, x in host_boxes if not bool(torch.isfinite(x).all()))
        raise AtssError(f"target {i}: boxes must be finite, got {x[~torch.isfinite(x).all(1)][0].tolist()}")


def pad_targets(targets: Sequence[dict], device, rows: int | None = None, out: Sequence[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image GT lists -> (gt_boxes float32 [B, M, 4], gt_labels int64 [B, M], num_gt int64 [B])
    on `device`, padded with zeros to M = max(1, most GTs in an image), or to M = `rows` (at
    least that most; the CUDA-graph step pads to a fixed bucket). The assignment and the losses
    never read a row at or past num_gt[b], so M changes no value they compute.

    Host targets are padded on the host (in pinned memory when `device` is CUDA) and uploaded in
    one asynchronous copy per tensor; device targets are padded on their device. No value is read.
    `out`: three tensors of those shapes on `device` (a CUDA graph's static inputs) that the
    padded values are copied into, instead of new ones; M is then out[0]'s.
    """
    device = torch.device(device)
    boxes = [_as(t["boxes"], torch.float32).reshape(-1, 4) for t in targets]
    labels = [_as(t["labels"], torch.int64).reshape(-1) for t in targets]
    b, m = len(targets), max([1] + [x.shape[0] for x in boxes])
    if out is not None:
        rows = out[0].shape[1]
    if rows is not None:
        if rows < m:
            raise AtssError(f"internal: {m} GT boxes in an image do not fit {rows} padded rows")
        m = rows
    counts = host_tensor([x.shape[0] for x in boxes], torch.int64, device)
    on_host = all(x.device.type == "cpu" for x in boxes + labels)
    if on_host:
        gt_boxes = host_zeros((b, m, 4), torch.float32, device)
        gt_labels = host_zeros((b, m), torch.int64, device)
    else:
        gt_boxes = torch.zeros((b, m, 4), dtype=torch.float32, device=device)
        gt_labels = torch.zeros((b, m), dtype=torch.int64, device=device)
    for i, (x, y) in enumerate(zip(boxes, labels)):
        gt_boxes[i, : x.shape[0]] = x
        gt_labels[i, : y.shape[0]] = y
    if out is not None:
        for dst, src in zip(out, (gt_boxes, gt_labels, counts)):
            dst.copy_(src, non_blocking=True)
        return tuple(out)
    return to_device(gt_boxes, device), to_device(gt_labels, device), to_device(counts, device)


def _as(value, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if value.dtype == dtype else value.to(dtype)
    return torch.as_tensor(value, dtype=dtype)
