"""Drawing detections on an image with torchvision.utils.draw_bounding_boxes.

    draw_detections(image, boxes, scores, labels, class_names, *, width=None) -> uint8 [3, H, W]
        image uint8 [3, H, W] (RGB); boxes xyxy [K, 4] in that image; one colour per class
        (a fixed palette, so a class keeps its colour across images); captions "name 0.87".
    draw_boxes(image, boxes, labels, class_names, *, width=None) -> uint8 [3, H, W]
        The same without scores (ground truth, as `atss prepare --draw` shows it): captions "name".
    encode_png(image) -> bytes    uint8 [3, H, W] RGB as a PNG file's bytes.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence


def class_color(label: int) -> tuple[int, int, int]:
    """A bright colour per class: hues spread by the golden ratio, so neighbours differ."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def draw_detections(image, boxes, scores, labels, class_names: Sequence[str] | None = None, *,
                    width: int | None = None):
    labels = [int(x) for x in labels]
    captions = [f"{class_name(lab, class_names)} {float(s):.2f}" for lab, s in zip(labels, scores)]
    return _draw(image, boxes, labels, captions, width)


def draw_boxes(image, boxes, labels, class_names: Sequence[str] | None = None, *, width: int | None = None):
    labels = [int(x) for x in labels]
    return _draw(image, boxes, labels, [class_name(lab, class_names) for lab in labels], width)


def encode_png(image) -> bytes:
    import cv2
    import numpy as np

    bgr = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()[:, :, ::-1])
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _draw(image, boxes, labels: list[int], captions: list[str], width: int | None):
    import torch
    from torchvision.utils import draw_bounding_boxes

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    if len(boxes) == 0:
        return image.clone()
    h, w = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    colors = [class_color(lab) for lab in labels]
    width = width or max(1, round(max(h, w) / 400))
    # Captions in black on a patch of the box colour: readable on any background.
    return draw_bounding_boxes(image, boxes, labels=captions, colors=colors, width=width, fill_labels=True)
