"""Decoding and the SPEC.md section 5 transforms, as MMDetection 3.3.0 runs them (mmcv with OpenCV).

    read_image(path) -> uint8 [H, W, 3] BGR ndarray    cv2.imdecode(IMREAD_COLOR): EXIF orientation applied
    decode_rgb(path) -> uint8 [3, H, W] RGB tensor     the same pixels, for drawing
    exif_orientation(path) -> int                      the EXIF orientation tag (1 when absent)
    test_input(path_or_bgr, scale) -> (input, img_shape, (sx, sy))
    train_input(path_or_bgr, boxes, flip, scale) -> (input, img_shape, (sx, sy), boxes)
        input: normalised float32 [3, H, W] RGB zero-padded to a multiple of 32; img_shape (h, w)
        after the resize; scale factors new / old per axis; boxes float32 [M, 4] after resize and flip.
    train_pixels(path_or_bgr, boxes, flip, scale) -> (pixels, img_shape, (sx, sy), boxes)
        train_input before its normalisation and padding: pixels uint8 [3, h, w] RGB
    normalize_padded(pixels, extents) -> float32 [B, 3, H, W]
        uint8 [B, 3, H, W] RGB, each image in the top-left (h, w) of extents int64 [B, 2]: the
        float32 train_input gives, normalised where the batch lives (on the GPU)
    rescale_size(w, h, scale) -> (new_w, new_h, s)     keep ratio, fit inside (long, short)
    resize(image, boxes, scale) -> image, boxes, (sx, sy)   on uint8 [3, H, W] tensors; boxes clipped
    hflip(image, boxes) -> image, boxes                x1' = W - x2, x2' = W - x1
    rescale_boxes(boxes, sx, sy, w, h), flip_boxes(boxes, w)   the box halves of the two above
    normalize(image) -> float32                        (x - mean) / std, RGB
    pad_batch(images, divisor=32) -> [B, 3, H, W]      zero padding, bottom and right

OpenCV does the decoding and the resize because the reference pipeline does: its JPEG decoder
(libjpeg-turbo: CMYK, progressive, chroma upsampling), its EXIF handling and its fixed-point
INTER_LINEAR are what MMDetection feeds the model, bit for bit; a reimplementation would have to
track all three. tests/test_pipeline_parity.py checks the result against MMDetection's tensors.

Boxes are float32 [M, 4] xyxy tensors; shapes are (h, w); scale factors (sx, sy) = new / old.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
DEFAULT_SCALE = (1333, 800)
# EXIF orientations that turn the picture by 90 or 270 degrees (the shown w and h swap).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class DecodeError(Exception):
    """An image file that is missing, unreadable, truncated or that OpenCV cannot decode."""


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # DataLoader workers are the parallelism; OpenCV's pool would oversubscribe
    return cv2


def _truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it. libjpeg fills the missing rows
    with grey and only warns; MMDetection would train on that grey. In entropy-coded data 0xFF is
    always followed by 0x00 or a restart marker, so 0xFFDA (start of scan) and 0xFFD9 (end of
    image) appear only as markers (an EXIF thumbnail's come before the main image's)."""
    raw = data.tobytes()
    return raw[:2] == b"\xff\xd8" and raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] BGR as mmcv.imfrombytes(flag="color") with OpenCV: gray, palette and 16-bit
    images become 8-bit BGR, alpha is dropped, CMYK is converted, EXIF orientation is applied."""
    cv2 = _cv2()
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DecodeError(f"cannot read {path}: {reason}") from None
    if data.size == 0:
        raise DecodeError(f"cannot decode {path}: empty file")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise DecodeError(f"cannot decode {path}: {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise DecodeError(f"cannot decode {path}: not an image OpenCV reads")
    if _truncated_jpeg(data):
        raise DecodeError(f"cannot decode {path}: truncated JPEG (no end-of-image marker)")
    return img


def decode_rgb(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the file at `path`, EXIF orientation applied (the pixels `read_image` gives)."""
    return bgr_to_rgb_tensor(read_image(path))


def bgr_to_rgb_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of the file (1..8; 1 when absent or unreadable). Reads the header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - no readable EXIF means no rotation
        return 1
    return value if 1 <= value <= 8 else 1


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """mmcv's keep-ratio rescale_size: s = min(long / max(h, w), short / min(h, w)), sizes rounded half up."""
    long_edge, short_edge = max(scale), min(scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(s) + 0.5), int(h * float(s) + 0.5), s


def _resize_bgr(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    # mmcv.imresize: cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), called even at equal size.
    cv2 = _cv2()
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def _boxes_tensor(boxes) -> torch.Tensor:
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not isinstance(boxes, torch.Tensor) else boxes,
                        dtype=torch.float32)
    return b.reshape(-1, 4)


def rescale_boxes(boxes: torch.Tensor, sx: float, sy: float, w: int, h: int) -> torch.Tensor:
    # HorizontalBoxes.rescale_ then clip_: float32 multiply by the float32 factors, clamp to the image.
    out = boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def flip_boxes(boxes: torch.Tensor, w: int) -> torch.Tensor:
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return flipped


def _to_input(img: np.ndarray) -> torch.Tensor:
    """BGR uint8 [h, w, 3] -> DetDataPreprocessor's input: RGB, float32, (x - mean) / std, zeros to 32."""
    h, w = img.shape[:2]
    out = torch.zeros((3, -(-h // SIZE_DIVISOR) * SIZE_DIVISOR, -(-w // SIZE_DIVISOR) * SIZE_DIVISOR),
                      dtype=torch.float32)
    out[:, :h, :w] = normalize(_to_pixels(img))
    return out


def _to_pixels(img: np.ndarray) -> torch.Tensor:
    """BGR uint8 [h, w, 3] -> RGB uint8 [3, h, w] (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))


def _load(source) -> np.ndarray:
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] BGR array, got {source.dtype} {list(source.shape)}")
        return source
    return read_image(source)


def _pipeline(source, boxes, flip: bool, scale: tuple[int, int], finish=_to_input):
    img = _load(source)
    h, w = img.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, scale)
    img = _resize_bgr(img, new_w, new_h)
    new_h, new_w = img.shape[:2]
    sx, sy = new_w / w, new_h / h
    out_boxes = rescale_boxes(_boxes_tensor(boxes), sx, sy, new_w, new_h) if boxes is not None else None
    if flip:
        img = img[:, ::-1]
        if out_boxes is not None:
            out_boxes = flip_boxes(out_boxes, new_w)
    return finish(img), (int(new_h), int(new_w)), (float(sx), float(sy)), out_boxes


def test_input(source, scale: tuple[int, int] = DEFAULT_SCALE):
    """MMDetection's test pipeline and data preprocessor for one image (a path, or `read_image`'s array):
    (float32 [3, H, W] padded to 32, img_shape (h, w), (sx, sy))."""
    tensor, img_shape, factors, _ = _pipeline(source, None, False, scale)
    return tensor, img_shape, factors


test_input.__test__ = False  # a name pytest would otherwise try to collect


def train_input(source, boxes, flip: bool, scale: tuple[int, int] = DEFAULT_SCALE):
    """MMDetection's train pipeline (Resize, RandomFlip) and data preprocessor for one image and its
    boxes (xyxy in the decoded, EXIF-applied frame): test_input's tuple plus float32 [M, 4] boxes."""
    return _pipeline(source, boxes, bool(flip), scale)


def train_pixels(source, boxes, flip: bool, scale: tuple[int, int] = DEFAULT_SCALE):
    """`train_input` up to the data preprocessor: (uint8 [3, h, w] RGB, img_shape, (sx, sy), boxes).
    A quarter of the bytes of the float32 input, with no padding: what a loader sends to the GPU,
    where `normalize_padded` gives train_input's tensor."""
    return _pipeline(source, boxes, bool(flip), scale, finish=_to_pixels)


def resize_image(image: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, new_h, new_w] holding uint8 values: cv2.resize INTER_LINEAR."""
    hwc = np.ascontiguousarray(image.to(torch.uint8).permute(1, 2, 0).numpy())
    out = _resize_bgr(hwc, int(new_w), int(new_h))
    if out.ndim == 2:
        out = out[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).to(torch.float32)


def resize(image: torch.Tensor, boxes: torch.Tensor, scale: tuple[int, int]):
    """Keep-ratio resize of `image` (uint8 [3, H, W]) and `boxes`; returns (float image, boxes, (sx, sy))."""
    h, w = image.shape[-2:]
    new_w, new_h, _ = rescale_size(w, h, scale)
    out = resize_image(image, new_w, new_h)
    sx, sy = new_w / w, new_h / h
    return out, rescale_boxes(_boxes_tensor(boxes), sx, sy, new_w, new_h), (sx, sy)


def hflip(image: torch.Tensor, boxes: torch.Tensor):
    """Mirror `image` [3, H, W] and its boxes left-right."""
    return image.flip(-1), flip_boxes(boxes, image.shape[-1])


def normalize(image: torch.Tensor) -> torch.Tensor:
    """float32 [3, H, W] RGB in 0..255 -> (x - mean) / std."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (image.to(torch.float32) - mean) / std


def normalize_padded(pixels: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] RGB -> float32 [B, 3, H, W]: `normalize` inside each image's (h, w) =
    extents[b] (int64 [B, 2], on the pixels' device) and 0 outside it: the values of normalising
    each image and then zero-padding it (`_to_input`, `pad_batch`), bit for bit, since each pixel
    goes through the same float32 subtraction and division by float32 tensors (a Python-scalar
    divisor would let CUDA multiply by its reciprocal instead). Nothing is read on the host and
    nothing is copied from pageable memory, so on a GPU it runs with no sync, in a CUDA graph if
    wanted."""
    device = pixels.device
    height, width = pixels.shape[-2:]
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    inside = (rows < extents[:, 0].view(-1, 1, 1, 1)) & (cols < extents[:, 1].view(-1, 1, 1, 1))
    mean, std = normalize_constants(device)
    return ((pixels.to(torch.float32) - mean) / std).masked_fill_(~inside, 0.0)


_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 [1, 3, 1, 1] on `device`, uploaded once per device. Made once rather
    than per call: a CUDA graph that captured the upload would replay a copy from a pinned host
    block the caching host allocator has since handed to other data."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    made = _CONSTANTS.get(device)
    if made is None:
        made = tuple(_upload(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1), device) for v in (MEAN, STD))
        _CONSTANTS[device] = made
    return made


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Pinned, so the copy is asynchronous; the caching host allocator keeps the pinned block
    # until the copy is done.
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def pad_batch(images: list[torch.Tensor], divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Stack [3, h_i, w_i] images into [B, 3, H, W] of their dtype, H and W the maxima rounded up to
    `divisor`, zeros after."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        out[i, :, :im.shape[-2], :im.shape[-1]] = im
    return out
