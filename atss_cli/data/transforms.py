"""Decoding and the SPEC.md section 5 transforms, as plain functions on tensors.

    decode_rgb(path) -> uint8 [3, H, W]                    torchvision.io, PIL as fallback
    rescale_size(w, h, scale) -> (new_w, new_h, s)          keep ratio, fit inside (long, short)
    resize(image, boxes, scale) -> image, boxes, (sx, sy)   bilinear as OpenCV INTER_LINEAR; boxes clipped
    hflip(image, boxes) -> image, boxes                     x1' = W - x2, x2' = W - x1
    normalize(image) -> float32                             (x - mean) / std, RGB
    pad_batch(images, divisor=32) -> [B, 3, H, W]           zero padding, bottom and right

Boxes are float32 [M, 4] xyxy tensors; shapes are (h, w); scale factors (sx, sy) = new / old.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32


class DecodeError(Exception):
    """An image file that is missing or that neither torchvision nor PIL can decode."""


def decode_rgb(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the file at `path` (no EXIF rotation: the JSON sizes are the stored ones)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():
        # torchvision 0.29 warns on every call that its decoders move to TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            data = read_file(str(path))
        except (OSError, RuntimeError) as exc:
            raise DecodeError(f"cannot read {path}: {exc}") from None
        try:
            img = decode_image(data, mode=ImageReadMode.RGB)
            if img.ndim == 3 and img.shape[0] == 3:
                return img
        except (RuntimeError, ValueError):
            pass
    try:  # formats or variants torchvision does not decode
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        raise DecodeError(f"cannot decode {path}: {exc}") from None


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """MMDetection's keep-ratio rescale: s = min(long / max(h, w), short / min(h, w))."""
    long_edge, short_edge = max(scale), min(scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * s + 0.5), int(h * s + 0.5), s


def resize_image(image: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, new_h, new_w] holding uint8 values, bilinear as OpenCV INTER_LINEAR.

    Half-pixel centres (align_corners=False), no antialiasing, then rounded and clamped to 0..255
    as OpenCV's uint8 output (which uses 11-bit fixed point: values may differ by 1).
    """
    x = image.to(torch.float32)
    if (new_h, new_w) != tuple(image.shape[-2:]):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)[0]
        x = x.round_().clamp_(0, 255)
    return x


def resize(image: torch.Tensor, boxes: torch.Tensor, scale: tuple[int, int]):
    """Keep-ratio resize of `image` (uint8 [3, H, W]) and `boxes`; returns (float image, boxes, (sx, sy))."""
    h, w = image.shape[-2:]
    new_w, new_h, _ = rescale_size(w, h, scale)
    out = resize_image(image, new_w, new_h)
    sx, sy = new_w / w, new_h / h
    boxes = boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
    return out, boxes, (sx, sy)


def hflip(image: torch.Tensor, boxes: torch.Tensor):
    """Mirror `image` [3, H, W] and its boxes left-right."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return image.flip(-1), flipped


def normalize(image: torch.Tensor) -> torch.Tensor:
    """float32 [3, H, W] RGB in 0..255 -> (x - mean) / std."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (image.to(torch.float32) - mean) / std


def pad_batch(images: list[torch.Tensor], divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Stack [3, h_i, w_i] images into [B, 3, H, W], H and W the maxima rounded up to `divisor`, zeros after."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        out[i, :, :im.shape[-2], :im.shape[-1]] = im
    return out
