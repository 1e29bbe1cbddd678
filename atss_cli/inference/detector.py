"""The detector for people who embed it: `from atss_cli import Detector`.

    det = Detector.from_checkpoint("epoch_12.pth", device="cpu")   # ours or MMDetection's
    det = Detector.from_onnx("model.onnx")                          # an `atss export` file
    results = det(["a.jpg", pil_image, rgb_array, rgb_tensor])      # one Detections per image
    r = results[0]; r.boxes, r.scores, r.labels, r.names

Accepted inputs, each turned into the BGR array the test pipeline starts from:
    str / pathlib.Path     an image file, decoded by OpenCV with its EXIF orientation applied
                           (atss_cli.data.transforms.read_image, as `atss predict` and training)
    PIL.Image.Image        converted to RGB; EXIF is not applied (the pixels as given)
    numpy.ndarray          uint8 [H, W, 3] RGB
    torch.Tensor           uint8 [3, H, W] RGB, on any device
Results are numpy, whatever the backend (`atss_cli.inference.onnx_runtime.Detections`): boxes float32
[N, 4] xyxy in pixels of the given image, scores float32 [N], labels int64 [N] (0..C-1), names
list[str], sorted by descending score, scores >= `score_thr`. Each image runs as a batch of
one, as `atss predict` runs it, so results do not depend on what else is in the list.

torch is imported only by `from_checkpoint`/`from_model` and for tensor inputs: a `Detector`
from an ONNX file works where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from atss_cli.errors import AtssError
from atss_cli.inference.onnx_runtime import Detections

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    import torch

    from atss_cli.inference.onnx_runtime import OnnxDetector

ImageInput = Union[str, Path, "PIL.Image.Image", np.ndarray, "torch.Tensor"]
__all__ = ["Detector", "Detections", "ImageInput", "to_bgr"]


def to_bgr(item: Any, index: int = 0) -> np.ndarray:
    """One accepted input -> uint8 [H, W, 3] BGR (contiguous). A wrong kind, dtype or shape is
    an AtssError naming the input's position."""
    if isinstance(item, (str, Path)):
        try:
            from atss_cli.data.transforms import DecodeError, read_image
        except ImportError:  # no torch: the runtime's decoder (same cv2.imdecode, EXIF applied)
            from atss_cli.inference.onnx_runtime import read_bgr

            return read_bgr(item)
        try:
            return read_image(item)
        except DecodeError as exc:
            raise AtssError(str(exc)) from None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise AtssError(f"input {index}: a numpy image must be uint8 [H, W, 3] RGB, got {item.dtype} "
                            f"{list(item.shape)}")
        return np.ascontiguousarray(item[:, :, ::-1])
    module = type(item).__module__ or ""
    if module.startswith("PIL."):
        return np.ascontiguousarray(np.asarray(item.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
    if module.startswith("torch"):
        import torch

        if not isinstance(item, torch.Tensor) or item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] != 3:
            got = f"{item.dtype} {list(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
            raise AtssError(f"input {index}: a tensor image must be uint8 [3, H, W] RGB, got {got}")
        return np.ascontiguousarray(item.detach().cpu().numpy().transpose(1, 2, 0)[:, :, ::-1])
    raise AtssError(f"input {index}: expected a file path, PIL image, uint8 [H, W, 3] RGB array or uint8 "
                    f"[3, H, W] RGB tensor, got {type(item).__name__}")


class Detector:
    """An ATSS detector on PyTorch or ONNX Runtime; call it on a list of images.

    Attributes: class_names (label order), categories ([{"id", "name"}] when known, else None),
    scale (long, short test resize), backend ("torch" or "onnxruntime"), score_thr (the default
    display threshold of `__call__`), onnx (the OnnxDetector of a `from_onnx` one, else None).
    """

    onnx: "OnnxDetector | None" = None

    def __init__(self, run_one: Callable[[np.ndarray], Detections], *, class_names: Sequence[str],
                 scale: tuple[int, int], backend: str, categories: list[dict] | None = None,
                 score_thr: float = 0.0, close: Callable[[], None] | None = None):
        self._run_one = run_one
        self.class_names = [str(n) for n in class_names]
        self.categories = categories
        self.scale = (int(scale[0]), int(scale[1]))
        self.backend = backend
        self.score_thr = float(score_thr)
        self._close = close

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", *, scale: tuple[int, int] | None = None,
                        class_names: Sequence[str] | None = None, model_overrides: dict | None = None,
                        score_thr: float = 0.0, amp: str | None = None) -> "Detector":
        """Our checkpoint or MMDetection's ATSS one. Class names: `class_names`, else the
        checkpoint's, else COCO's 80 for an 80-class model, else "class N"."""
        from atss_cli.device import resolve_device
        from atss_cli.inference.checkpoint import CLS_WEIGHT, load_detector, read_checkpoint_info

        info = read_checkpoint_info(path)
        if info.num_classes is None:
            raise AtssError(f"{path} has no {CLS_WEIGHT}: not an ATSS checkpoint")
        if class_names is not None and len(class_names) != info.num_classes:
            raise AtssError(f"{len(class_names)} class names given but {Path(path).name} predicts "
                            f"{info.num_classes} classes")
        dev = resolve_device(device)
        loaded = load_detector(path, device=dev, overrides=model_overrides, scale=scale, info=info)
        names = list(class_names) if class_names is not None else loaded.class_names
        return cls.from_model(loaded.model, device=dev, class_names=names, scale=loaded.scale,
                              categories=loaded.categories, score_thr=score_thr, amp=amp)

    @classmethod
    def from_model(cls, model, *, device="cpu", class_names: Sequence[str] | None = None,
                   scale: tuple[int, int] = (1333, 800), categories: list[dict] | None = None,
                   score_thr: float = 0.0, amp: str | None = None) -> "Detector":
        """Any object with ATSS's `predict(images, img_shapes, scale_factors)` (an nn.Module
        is put in eval mode for each call and restored after)."""
        import torch

        from atss_cli.data.transforms import test_input
        from atss_cli.precision import autocast, unwrap_model

        dev = torch.device(device)
        net = unwrap_model(model)
        use_scale = (int(scale[0]), int(scale[1]))

        def run_one(bgr: np.ndarray) -> Detections:
            tensor, img_shape, factors = test_input(bgr, use_scale)
            was_training = getattr(net, "training", False)
            if hasattr(net, "eval"):
                net.eval()
            try:
                with torch.no_grad(), autocast(dev, amp):
                    det = net.predict(tensor[None].to(dev), [img_shape], [factors])[0]
            finally:
                if hasattr(net, "train"):
                    net.train(was_training)
            return Detections(det["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                              det["scores"].detach().float().cpu().numpy(),
                              det["labels"].detach().cpu().numpy().astype(np.int64))

        names = list(class_names) if class_names is not None else [
            f"class {i}" for i in range(int(getattr(net, "num_classes", 0) or 0))]
        return cls(run_one, class_names=names, scale=use_scale, backend="torch", categories=categories,
                   score_thr=score_thr)

    @classmethod
    def from_onnx(cls, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None,
                  scale: tuple[int, int] | None = None, score_thr: float = 0.0) -> "Detector":
        """An `atss export` file on ONNX Runtime; names, categories and scale from its metadata."""
        from atss_cli.inference.onnx_runtime import OnnxDetector

        onnx_det = OnnxDetector(path, threads=threads, providers=providers)
        use_scale = tuple(scale) if scale else onnx_det.scale

        def run_one(bgr: np.ndarray) -> Detections:
            return onnx_det([bgr], scale=use_scale, score_thr=-1.0)[0]

        det = cls(run_one, class_names=onnx_det.class_names, scale=use_scale, backend="onnxruntime",
                  categories=onnx_det.categories, score_thr=score_thr)
        det.onnx = onnx_det
        return det

    # ---- running ---------------------------------------------------------------------------------
    def __call__(self, inputs: Sequence[ImageInput] | ImageInput, *, score_thr: float | None = None
                 ) -> list[Detections]:
        """One Detections per input (a single input is taken as a list of one)."""
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return [self.detect_bgr(to_bgr(item, i), score_thr=score_thr) for i, item in enumerate(inputs)]

    def detect_bgr(self, bgr: np.ndarray, *, score_thr: float | None = None) -> Detections:
        """One decoded image (uint8 [H, W, 3] BGR, as read_image gives) -> its Detections."""
        thr = self.score_thr if score_thr is None else float(score_thr)
        raw = self._run_one(bgr)
        keep = raw.scores >= thr
        boxes, scores, labels = raw.boxes[keep], raw.scores[keep], raw.labels[keep]
        order = np.argsort(-scores, kind="stable")
        labels = labels[order]
        names = [self.class_names[int(i)] if 0 <= int(i) < len(self.class_names) else f"class {int(i)}"
                 for i in labels]
        return Detections(boxes[order], scores[order], labels, names, int(bgr.shape[1]), int(bgr.shape[0]))
