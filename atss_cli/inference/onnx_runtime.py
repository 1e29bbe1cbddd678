"""Run an `atss export` ONNX file with ONNX Runtime: no torch needed.

This module imports only numpy, OpenCV and onnxruntime (and the standard library), so it works
in an environment without torch, even copied on its own next to the .onnx file:

    from onnx_runtime import OnnxDetector        # or: from atss_cli.export.runtime import ...
    det = OnnxDetector("model.onnx", threads=2)
    result = det([bgr_image])[0]                  # uint8 [H, W, 3] BGR, as cv2.imread gives
    result.boxes, result.scores, result.labels, result.names

`OnnxDetector.preprocess` is `atss_cli.data.transforms.test_input` without the normalisation
(the graph normalises): mmcv's keep-ratio rescale, cv2.resize INTER_LINEAR, zero padding to 32.
The graph does the rest (atss_cli/export/onnx_export.py). Results are numpy arrays sorted by
descending score: boxes float32 [N, 4] xyxy in pixels of the given image, scores float32 [N],
labels int64 [N] (0..C-1), names list[str] (the class names stored in the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

try:  # inside atss_cli the CLI prints these as one line; alone, they are plain exceptions
    from atss_cli.errors import AtssError as _Base
except ImportError:  # pragma: no cover - the file used on its own
    _Base = Exception

FORMAT = "atss-onnx-1"
__all__ = ["FORMAT", "OnnxModelError", "Detections", "rescale_size", "read_metadata", "OnnxDetector", "read_bgr"]


class OnnxModelError(_Base):
    """A file that is not an `atss export` ONNX graph, or input it cannot take."""


@dataclass
class Detections:
    """One image's detections: numpy arrays, sorted by descending score."""

    boxes: np.ndarray                      # float32 [N, 4] x1, y1, x2, y2 in original-image pixels
    scores: np.ndarray                     # float32 [N]
    labels: np.ndarray                     # int64 [N], 0..C-1
    names: list[str] = field(default_factory=list)   # class name of each detection
    width: int = 0                         # the image's size
    height: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale_size (atss_cli.data.transforms.rescale_size)."""
    long_edge, short_edge = max(scale), min(scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(s) + 0.5), int(h * float(s) + 0.5)


def read_metadata(session) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != FORMAT:
        raise OnnxModelError("not an `atss export` file (its metadata has no format "
                             f"{FORMAT!r}); export the checkpoint with `atss export`")
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return meta


class OnnxDetector:
    """An exported ATSS detector on ONNX Runtime. `threads`: intra-op threads (None: ORT's
    default, all cores); `providers`: ORT execution providers (default CPU)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise OnnxModelError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings on stderr about unused initializers
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for unreadable files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxModelError(f"{path}: ONNX Runtime cannot load it: {first}") from None
        self.path = path
        self.meta = read_metadata(self.session)
        self.class_names: list[str] = list(self.meta["class_names"])
        self.categories: list[dict] = list(self.meta["categories"])
        self.scale: tuple[int, int] = tuple(int(v) for v in self.meta["scale"])
        self.divisor = int(self.meta.get("size_divisor", 32))

    def preprocess(self, bgr: np.ndarray, scale: Sequence[int] | None = None):
        """uint8 [H, W, 3] BGR -> (uint8 [3, h, w] RGB resized, (h, w), (sx, sy))."""
        import cv2

        if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
            got = f"{bgr.dtype} {list(bgr.shape)}" if isinstance(bgr, np.ndarray) else type(bgr).__name__
            raise OnnxModelError(f"expected a uint8 [H, W, 3] BGR image, got {got}")
        h, w = bgr.shape[:2]
        new_w, new_h = rescale_size(w, h, scale or self.scale)
        if new_w < 1 or new_h < 1:
            raise OnnxModelError(f"image of {w}x{h} px is too small to resize to the scale {self.scale}")
        resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1))
        return rgb, (new_h, new_w), (new_w / w, new_h / h)

    def pad(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """[3, h_i, w_i] -> uint8 [B, 3, H, W], H and W the largest rounded up to the divisor."""
        d = self.divisor
        hh = -(-max(im.shape[1] for im in images) // d) * d
        ww = -(-max(im.shape[2] for im in images) // d) * d
        batch = np.zeros((len(images), 3, hh, ww), dtype=np.uint8)
        for i, im in enumerate(images):
            batch[i, :, :im.shape[1], :im.shape[2]] = im
        return batch

    def run(self, images: np.ndarray, img_shape: np.ndarray, scale_factor: np.ndarray):
        """The graph on a prepared batch (its three inputs) -> (boxes, scores, labels, num_detections)."""
        self.check_input(images, img_shape)
        feeds = {"images": images, "img_shape": np.asarray(img_shape, dtype=np.int64),
                 "scale_factor": np.asarray(scale_factor, dtype=np.float32)}
        try:
            return self.session.run(["boxes", "scores", "labels", "num_detections"], feeds)
        except Exception as exc:  # noqa: BLE001 - e.g. an image too large for memory
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxModelError(f"ONNX Runtime failed on a {list(images.shape)} batch: {first}") from None

    def check_input(self, images: np.ndarray, img_shape: np.ndarray) -> None:
        """The sizes the graph takes: uint8 [B, 3, H, W], H and W positive multiples of the
        divisor, each img_shape inside the batch."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise OnnxModelError(f"the graph takes a uint8 [B, 3, H, W] batch, got {got}")
        hh, ww = images.shape[2:]
        if hh < self.divisor or ww < self.divisor or hh % self.divisor or ww % self.divisor:
            raise OnnxModelError(f"the graph takes images whose height and width are positive multiples of "
                                 f"{self.divisor}, got {ww}x{hh} (pad them, as OnnxDetector.pad does)")
        shapes = np.asarray(img_shape)
        if shapes.shape != (images.shape[0], 2) or (shapes < 1).any() or (shapes[:, 0] > hh).any() \
                or (shapes[:, 1] > ww).any():
            raise OnnxModelError(f"img_shape {shapes.tolist()} does not fit a batch of {list(images.shape)}")

    def __call__(self, images: Sequence[np.ndarray], *, score_thr: float = 0.0,
                 scale: Sequence[int] | None = None) -> list[Detections]:
        """BGR uint8 [H, W, 3] images -> one Detections each, scores >= score_thr. Each image is
        its own batch of one, as `atss predict` runs the PyTorch model (a padded batch would let
        GroupNorm see other images' padding)."""
        results = []
        for bgr in images:
            rgb, shape, factors = self.preprocess(bgr, scale)
            boxes, scores, labels, num = self.run(self.pad([rgb]), np.asarray([shape]), np.asarray([factors]))
            results.append(self.select(boxes[0], scores[0], labels[0], int(num[0]), score_thr,
                                       width=bgr.shape[1], height=bgr.shape[0]))
        return results

    def select(self, boxes, scores, labels, num: int, score_thr: float, *, width: int = 0,
               height: int = 0) -> Detections:
        boxes, scores, labels = boxes[:num], scores[:num], labels[:num]
        keep = scores >= score_thr
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = np.argsort(-scores, kind="stable")
        labels = labels[order].astype(np.int64)
        names = [self.class_names[int(i)] if 0 <= int(i) < len(self.class_names) else f"class {int(i)}"
                 for i in labels]
        return Detections(boxes[order].astype(np.float32), scores[order].astype(np.float32), labels, names,
                          int(width), int(height))


def read_bgr(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] BGR with the EXIF orientation applied (cv2.imdecode IMREAD_COLOR)."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise OnnxModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise OnnxModelError(f"cannot decode {path}")
    return image


def main(argv: Sequence[str] | None = None) -> int:
    """`python onnx_runtime.py model.onnx image.jpg ...`: detections as JSON lines (score >= 0.3)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python onnx_runtime.py MODEL.onnx IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    try:
        det = OnnxDetector(args[0])
        for path in args[1:]:
            r = det([read_bgr(path)], score_thr=0.3)[0]
            print(json.dumps({"file": path, "detections": [
                {"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "name": n}
                for b, s, n in zip(r.boxes, r.scores, r.names)]}))
    except OnnxModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
