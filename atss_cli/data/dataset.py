"""Datasets over a prepared split, and `collate` into the batch of docs/ARCHITECTURE.md.

A sample (dict):
    image         float32 [3, h, w]  resized, maybe flipped, normalised: a view of the padded input
                                     `transforms.train_input` / `test_input` give (collate pads);
                                     with TrainDataset(uint8_images=True) uint8 [3, h, w] RGB, not
                                     normalised (`transforms.train_pixels`), normalised where the
                                     batch is trained (`transforms.normalize_padded`)
    boxes         float32 [M, 4]     xyxy in the resized (and flipped) frame, clipped
    labels        int64 [M]          contiguous 0..C-1
    img_shape     (h, w)             after the resize
    ori_shape     (h, w)             the decoded original
    scale_factor  (sx, sy)           img / ori per axis
    image_id      int                COCO image id
    index         int                image index in the cache
    flipped       bool
    skipped       list[str]          files that failed to decode and were replaced by this one

The datasets hold the `CocoCache` (memory-mapped arrays, pickled as paths) and a numpy index
array, never a list of per-image Python objects: DataLoader workers share the page cache.

Boxes and labels are checked here (`check_sample_targets`, one-line `BadTargetsError`): the
model trusts them, so a training step never reads them back from the device.

Images are decoded as MMDetection decodes them (OpenCV, EXIF orientation applied), so the JSON's
sizes and boxes are in the displayed frame. A decoded size other than the JSON's is a bad image;
when the JSON holds the stored, unrotated size of a photo that EXIF turns by 90 or 270 degrees,
the reason says so (its boxes would be in the wrong frame, and they are never rotated).

Training: a missing, undecodable or wrongly sized file is replaced by the next training image
that decodes (deterministic), named in `skipped`, and counted per process with its reason
(`bad_images`); more than `max_corrupt` distinct bad files in one process raise
`CorruptImagesError` naming them. Test: a bad file raises `CorruptImagesError` naming it and the
reason (every image must be evaluated; skipping would change the AP).

A dataset key is an image position (int) or a pair (position, augmentation seed) as the
`GroupedGlobalBatchSampler` yields: with a seed the flip depends only on it, so a resumed run
and a run on another number of processes flip the same images.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from atss_cli.data.cache import CocoCache
from atss_cli.data.transforms import (TRANSPOSING_ORIENTATIONS, DecodeError, exif_orientation, pad_batch,
                                      read_image, rescale_boxes, test_input, train_input, train_pixels)
from atss_cli.errors import AtssError

DEFAULT_SCALE = (1333, 800)


class DataError(AtssError):
    """An AtssError that stays one line when a DataLoader worker raises it.

    A DataLoader re-raises a worker's exception as `type(exc)("Caught ... Original Traceback ...")`;
    this class keeps only the original message, so the CLI still prints one line.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            head = f"{type(self).__module__}.{type(self).__name__}: "
            message = last[len(head):] if last.startswith(head) else last.split(": ", 1)[-1]
        super().__init__(message)


class CorruptImagesError(DataError):
    """Too many bad images in training, or one in evaluation. One line, also from a loader worker."""


class BadTargetsError(DataError):
    """A sample whose boxes or labels the model cannot take. One line, also from a loader worker."""


def check_sample_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, where: str) -> None:
    """BadTargetsError naming `where` unless boxes is float32 [M, 4] and finite and labels int64 [M]
    in 0..num_classes-1. The data pipeline checks here, on the host, what the model then trusts:
    the training step reads nothing back from the device to check it again."""
    if boxes.dtype != torch.float32 or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise BadTargetsError(f"{where}: boxes must be float32 [M, 4], got {boxes.dtype} {list(boxes.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
        raise BadTargetsError(f"{where}: labels must be int64 [{boxes.shape[0]}] (one per box), "
                              f"got {labels.dtype} {list(labels.shape)}")
    if boxes.shape[0] == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise BadTargetsError(f"{where}: label {bad} is not in 0..{num_classes - 1}")
    if not bool(torch.isfinite(boxes).all()):
        bad = boxes[~torch.isfinite(boxes).all(1)][0].tolist()
        raise BadTargetsError(f"{where}: box {bad} is not finite")


def _key(key) -> tuple[int, int | None]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


class _Base(torch.utils.data.Dataset):
    def __init__(self, cache: CocoCache, indices: np.ndarray, scale: tuple[int, int]):
        self.cache = cache
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.scale = (int(scale[0]), int(scale[1]))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def landscape(self) -> np.ndarray:
        """bool per position: width >= height (the aspect-ratio group of the sampler)."""
        return self.cache.landscape(self.indices)

    def _decode(self, idx: int) -> np.ndarray:
        """The BGR pixels of image `idx`; DecodeError (the reason) when missing, undecodable or not the JSON's size."""
        path = self.cache.image_path(idx)
        img = read_image(path)
        h, w = int(img.shape[0]), int(img.shape[1])
        jh, jw = int(self.cache.heights[idx]), int(self.cache.widths[idx])
        if (h, w) != (jh, jw):
            orientation = exif_orientation(path) if (h, w) == (jw, jh) else 1
            if orientation in TRANSPOSING_ORIENTATIONS:
                raise DecodeError(f"{path}: the JSON's {jw}x{jh} is the stored, unrotated size; EXIF orientation "
                                  f"{orientation} shows it as {w}x{h} (annotate the displayed image)")
            raise DecodeError(f"{path}: decodes to {w}x{h} but the JSON says {jw}x{jh}")
        return img

    def _sample(self, idx: int, img: np.ndarray, flip: bool, skipped: list[str], uint8: bool = False) -> dict:
        cache = self.cache
        labels = torch.from_numpy(cache.labels(idx))
        ori_h, ori_w = int(img.shape[0]), int(img.shape[1])
        pipeline = train_pixels if uint8 else train_input
        image, (h, w), (sx, sy), boxes = pipeline(img, torch.from_numpy(cache.boxes(idx)), flip, self.scale)
        check_sample_targets(boxes, labels, cache.num_classes, f"image {cache.file_name(idx)}")
        return {"image": image[:, :h, :w], "boxes": boxes, "labels": labels, "img_shape": (h, w),
                "ori_shape": (ori_h, ori_w), "scale_factor": (sx, sy), "image_id": int(cache.image_ids[idx]),
                "index": idx, "flipped": flip, "skipped": skipped}


class TrainDataset(_Base):
    """The training images of `cache` (`cache.train_indices()`), resized, flipped with `flip_prob`;
    normalised, or with `uint8_images` left as uint8 RGB for the training step to normalise on
    its device (a quarter of the bytes through the loader's queue and the host-to-GPU copy)."""

    def __init__(self, cache: CocoCache, scale: tuple[int, int] = DEFAULT_SCALE, flip_prob: float = 0.5,
                 max_corrupt: int = 100, indices: np.ndarray | None = None, uint8_images: bool = False):
        super().__init__(cache, cache.train_indices() if indices is None else indices, scale)
        if len(self) == 0:
            raise AtssError(f"split {cache.split!r} has no image usable for training")
        self.uint8_images = bool(uint8_images)
        self.flip_prob = float(flip_prob)
        self.max_corrupt = int(max_corrupt)
        self._bad: dict[str, str] = {}  # name -> reason, for the bad files met by this process (small)

    def bad_images(self) -> dict[str, str]:
        """{file name: reason} of the bad training images this process met (and skipped)."""
        return dict(self._bad)

    def __getitem__(self, key) -> dict:
        pos, seed = _key(key)
        flip = (random.Random(seed).random() if seed is not None else torch.rand(()).item()) < self.flip_prob
        skipped: list[str] = []
        n = len(self)
        for attempt in range(n):
            idx = int(self.indices[(pos + attempt) % n])
            name = self.cache.file_name(idx)
            if name in self._bad:
                skipped.append(name)
                continue
            try:
                image = self._decode(idx)
            except DecodeError as exc:
                self._bad[name] = str(exc)
                skipped.append(name)
                if len(self._bad) > self.max_corrupt:
                    shown = ", ".join(sorted(self._bad)[:5])
                    raise CorruptImagesError(
                        f"{len(self._bad)} missing, undecodable or wrongly sized training images in "
                        f"{self.cache.image_dir} (limit {self.max_corrupt}): {shown}"
                        f"{', ...' if len(self._bad) > 5 else ''} (first: {self._bad[min(self._bad)]}); "
                        "run `atss prepare --check-images` to list them") from None
                continue
            return self._sample(idx, image, flip, skipped, self.uint8_images)
        raise CorruptImagesError(f"no training image of {self.cache.image_dir} can be decoded")


class TestDataset(_Base):
    """Every image of `cache`, in order, resized, not flipped."""

    __test__ = False  # a name pytest would otherwise try to collect

    def __init__(self, cache: CocoCache, scale: tuple[int, int] = DEFAULT_SCALE):
        super().__init__(cache, np.arange(cache.num_images, dtype=np.int64), scale)

    def __getitem__(self, key) -> dict:
        pos, _ = _key(key)
        idx = int(self.indices[pos])
        try:
            image = self._decode(idx)
        except DecodeError as exc:
            raise CorruptImagesError(f"cannot evaluate {self.cache.split}: {exc} (every image counts in COCOeval; "
                                     "restore or fix the file)") from None
        return self._test_sample(idx, image)

    def _test_sample(self, idx: int, img: np.ndarray) -> dict:
        cache = self.cache
        padded, (h, w), (sx, sy) = test_input(img, self.scale)
        boxes = rescale_boxes(torch.from_numpy(cache.boxes(idx)), sx, sy, w, h)
        labels = torch.from_numpy(cache.labels(idx))
        check_sample_targets(boxes, labels, cache.num_classes, f"image {cache.file_name(idx)}")
        return {"image": padded[:, :h, :w], "boxes": boxes, "labels": labels, "img_shape": (h, w),
                "ori_shape": (int(img.shape[0]), int(img.shape[1])), "scale_factor": (sx, sy),
                "image_id": int(cache.image_ids[idx]), "index": idx, "flipped": False, "skipped": []}


def collate(samples: list[dict]) -> dict:
    """Samples -> {"images" [B,3,H,W] padded to 32 (the samples' dtype), "image_sizes" int64 [B, 2]
    (each image's (h, w) in it), "targets" [...], "skipped" [names], "indices" [...], "flipped"}."""
    targets = [{"boxes": s["boxes"], "labels": s["labels"], "img_shape": s["img_shape"],
                "ori_shape": s["ori_shape"], "scale_factor": s["scale_factor"], "image_id": s["image_id"]}
               for s in samples]
    # A rank's share of an epoch's short last batch may be empty: [0, 3, 32, 32] and no targets.
    images = pad_batch([s["image"] for s in samples]) if samples else torch.zeros((0, 3, 32, 32))
    # The extents as a tensor, so the loader pins them with the images and a uint8 batch is
    # normalised and padded on the GPU with no host value read there.
    sizes = torch.tensor([s["img_shape"] for s in samples], dtype=torch.int64).reshape(-1, 2)
    return {"images": images, "image_sizes": sizes, "targets": targets,
            "skipped": [name for s in samples for name in s["skipped"]],
            "indices": [s["index"] for s in samples], "flipped": [s["flipped"] for s in samples]}
