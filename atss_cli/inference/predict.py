"""Detections on image files: boxes drawn into copies of the pictures, and a JSON of them all.

    predict_files(detector_or_model, paths, *, device="cpu", out_dir, class_names=None,
                  scale=(1333, 800), score_thr=0.3, amp=None, on_skip=None, on_image=None,
                  detections_name="detections.json") -> dict
        `detector_or_model`: an atss_cli.Detector (inference/detector.py; PyTorch or ONNX Runtime), or
        a model with ATSS's `predict`, wrapped in a Detector with `device`, `class_names`,
        `scale`, `amp`. For each path: decode (atss_cli.data.transforms.read_image: OpenCV, EXIF
        orientation applied, as MMDetection), the Detector (the test pipeline: keep-ratio resize,
        normalise, pad to 32; predict; keep scores >= `score_thr`), draw boxes, class names and
        scores (torchvision.utils.draw_bounding_boxes), write `out_dir/<stem>.png|.jpg` (JPEG in,
        JPEG out; anything else PNG; a repeated stem gets `_1`, `_2`, ...). A missing or
        undecodable file is skipped: `on_skip(path, reason)` is called and it is listed under
        "skipped". Returns (and writes atomically to `out_dir/detections_name`):
            {"score_thr", "scale", "class_names",
             "images": [{"file", "output", "width", "height",
                         "detections": [{"box": [x1, y1, x2, y2], "score", "label", "name"}]}],
             "skipped": [{"file", "reason"}],
             "detections": path of the JSON}
        Boxes are in pixels of the displayed (EXIF-applied) image, sorted by descending score;
        "width" and "height" are that image's.
        `on_image(record)` is called after each written picture (for progress).

    make_detector(checkpoint=None, *, onnx=None, coco=None, split="val2017", ann=None,
                  device="auto", scale=None, model_overrides=None, amp=None, threads=None)
        The Detector of `atss predict`: a checkpoint (ours or MMDetection's) on PyTorch, or an
        `atss export` file on ONNX Runtime, with class names from `class_names_for`.

    predict_checkpoint(checkpoint, images, out_dir, *, coco=None, split="val2017", ann=None,
                       onnx=None, device="auto", scale=None, score_thr=0.3, model_overrides=None,
                       amp=None, threads=None, on_skip=None, on_image=None) -> dict
        `atss predict` as a function: `make_detector`, then `predict_files`.

Class names come from atss_cli.data.categories.class_names_for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from atss_cli.data.categories import class_names_for
from atss_cli.data.coco_results import write_json_atomic
from atss_cli.errors import AtssError, param

JPEG_SUFFIXES = (".jpg", ".jpeg")


def _output_path(out_dir: Path, src: Path, taken: set[str]) -> Path:
    suffix = ".jpg" if src.suffix.lower() in JPEG_SUFFIXES else ".png"
    stem, n = src.stem or "image", 0
    name = f"{stem}{suffix}"
    while name in taken:
        n += 1
        name = f"{stem}_{n}{suffix}"
    taken.add(name)
    return out_dir / name


def _write_image(image, path: Path) -> None:
    import cv2
    import numpy as np

    from atss_cli.atomic import atomic_write_bytes

    bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
    ok, data = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise AtssError(f"cannot encode {path.name}")
    atomic_write_bytes(path, data.tobytes())


def predict_files(model, paths: Sequence[str | Path], *, device="cpu", out_dir: str | Path,
                  class_names: Sequence[str] | None = None, scale: tuple[int, int] = (1333, 800),
                  score_thr: float = 0.3, amp: str | None = None,
                  on_skip: Callable[[Path, str], None] | None = None,
                  on_image: Callable[[dict], None] | None = None,
                  detections_name: str = "detections.json") -> dict:
    """`model`: an atss_cli.Detector (then `device`, `class_names`, `scale` and `amp` are its
    own), or a model with ATSS's `predict`, wrapped in one with those."""
    import torch

    from atss_cli.inference.detector import Detector
    from atss_cli.data.transforms import DecodeError, bgr_to_rgb_tensor, read_image
    from atss_cli.drawing import draw_detections

    if isinstance(model, Detector):
        detector = model
    else:
        detector = Detector.from_model(model, device=device, class_names=class_names, scale=tuple(scale), amp=amp)
        if class_names is None:
            detector.class_names = []  # "class N" captions, as before
    names = detector.class_names
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    records: list[dict] = []
    skipped: list[dict] = []
    for raw in paths:
        src = Path(raw)
        try:
            if not src.is_file():
                raise DecodeError("no such file" if not src.exists() else "not a file")
            bgr = read_image(src)
        except DecodeError as exc:
            reason = str(exc)
            skipped.append({"file": str(src), "reason": reason})
            if on_skip is not None:
                on_skip(src, reason)
            continue
        h, w = int(bgr.shape[0]), int(bgr.shape[1])
        det = detector.detect_bgr(bgr, score_thr=score_thr)
        dst = _output_path(out, src, taken)
        image = bgr_to_rgb_tensor(bgr)
        del bgr
        _write_image(draw_detections(image, torch.from_numpy(det.boxes), det.scores, det.labels, names), dst)
        record = {"file": str(src), "output": str(dst), "width": w, "height": h,
                  "detections": [{"box": [float(v) for v in b], "score": float(s), "label": int(lab), "name": n}
                                 for b, s, lab, n in zip(det.boxes.tolist(), det.scores.tolist(),
                                                         det.labels.tolist(), det.names)]}
        records.append(record)
        if on_image is not None:
            on_image(record)
    summary = {"score_thr": float(score_thr), "scale": list(detector.scale),
               "class_names": list(names) if names else None,
               "images": records, "skipped": skipped}
    det_path = write_json_atomic(out / detections_name, summary)
    summary["detections"] = str(det_path)
    return summary


def make_detector(checkpoint: str | Path | None = None, *, onnx: str | Path | None = None,
                  coco: str | Path | None = None, split: str = "val2017", ann: str | Path | None = None,
                  device: str = "auto", scale: tuple[int, int] | None = None, model_overrides: dict | None = None,
                  amp: str | None = None, threads: int | None = None):
    """The Detector `atss predict` runs: from a checkpoint (PyTorch) or an `atss export` file
    (ONNX Runtime, on the CPU); class names from --ann, else --coco, else the file's own, else
    COCO's 80 for 80 classes, else "class N"."""
    from atss_cli.inference.detector import Detector

    if (checkpoint is None) == (onnx is None):
        raise AtssError(f"give either {param('checkpoint')} CKPT or {param('onnx')} FILE")
    if coco is not None and ann is not None:
        raise AtssError(f"give either {param('coco')} ROOT or {param('ann')} FILE as the source of class names, not both")
    if onnx is not None:
        if device not in ("auto", "cpu"):
            raise AtssError(f"{param('onnx')} runs on the CPU with ONNX Runtime; {param('device')} {device} is for {param('checkpoint')}")
        if any(v is not None for v in (model_overrides or {}).values()):
            raise AtssError(f"{param('depth')}, {param('fpn_channels')}, {param('head_channels')} and {param('stacked_convs')} are for {param('checkpoint')}; "
                            "an ONNX file holds its architecture")
        detector = Detector.from_onnx(onnx, threads=threads, scale=scale)
    else:
        detector = Detector.from_checkpoint(checkpoint, device=device, scale=scale, model_overrides=model_overrides,
                                            amp=amp)
    # The detector's own names already are the file's, else COCO's 80, else "class N".
    detector.class_names = class_names_for(len(detector.class_names), coco_root=coco, split=split, ann=ann,
                                           stored_names=detector.class_names)
    return detector


def predict_checkpoint(checkpoint: str | Path | None, images: Sequence[str | Path], out_dir: str | Path, *,
                       coco: str | Path | None = None, split: str = "val2017", ann: str | Path | None = None,
                       onnx: str | Path | None = None, device: str = "auto",
                       scale: tuple[int, int] | None = None, score_thr: float = 0.3,
                       model_overrides: dict | None = None, amp: str | None = None, threads: int | None = None,
                       on_skip: Callable[[Path, str], None] | None = None,
                       on_image: Callable[[dict], None] | None = None) -> dict:
    """`atss predict` as a function: `make_detector`, then `predict_files`. The architecture
    comes from the checkpoint's config (else R50 defaults, or `model_overrides`), the test scale
    from `scale`, else the checkpoint config (or the ONNX metadata), else (1333, 800).
    Returns `predict_files`'s summary plus "checkpoint" or "onnx"."""
    if not 0.0 <= score_thr <= 1.0:
        raise AtssError(f"{param('score_thr')} must be between 0 and 1, got {score_thr}")
    detector = make_detector(checkpoint, onnx=onnx, coco=coco, split=split, ann=ann, device=device, scale=scale,
                             model_overrides=model_overrides, amp=amp, threads=threads)
    summary = predict_files(detector, images, out_dir=out_dir, score_thr=score_thr, on_skip=on_skip,
                            on_image=on_image)
    summary["checkpoint" if onnx is None else "onnx"] = str(checkpoint if onnx is None else onnx)
    return summary
