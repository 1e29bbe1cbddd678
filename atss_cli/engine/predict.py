"""Detections on image files: boxes drawn into copies of the pictures, and a JSON of them all.

    predict_files(model, paths, *, device, out_dir, class_names=None, scale=(1333, 800),
                  score_thr=0.3, amp=None, on_skip=None, on_image=None,
                  detections_name="detections.json") -> dict
        For each path: decode (atss_cli.data.transforms.read_image: OpenCV, EXIF orientation
        applied, as MMDetection), the test pipeline of evaluation (transforms.test_input:
        keep-ratio resize, normalise, pad to 32), `model.predict`, keep scores >= `score_thr`, draw boxes,
        class names and scores (torchvision.utils.draw_bounding_boxes), write
        `out_dir/<stem>.png|.jpg` (JPEG in, JPEG out; anything else PNG; a repeated stem gets
        `_1`, `_2`, ...). A missing or undecodable file is skipped: `on_skip(path, reason)` is
        called and it is listed under "skipped". Returns (and writes atomically to
        `out_dir/detections_name`):
            {"score_thr", "scale", "class_names",
             "images": [{"file", "output", "width", "height",
                         "detections": [{"box": [x1, y1, x2, y2], "score", "label", "name"}]}],
             "skipped": [{"file", "reason"}],
             "detections": path of the JSON}
        Boxes are in pixels of the displayed (EXIF-applied) image, sorted by descending score;
        "width" and "height" are that image's.
        `on_image(record)` is called after each written picture (for progress).

    predict_checkpoint(checkpoint, images, out_dir, *, coco=None, split="val2017", device="auto",
                       scale=None, score_thr=0.3, model_overrides=None, amp=None, on_skip=None,
                       on_image=None) -> dict
        `atss predict` as a function: model from the checkpoint (see
        atss_cli.engine.inference), names from `class_names_for`, then `predict_files`.

    class_names_for(num_classes, *, coco_root=None, split="val2017", checkpoint_names=None)
        -> list[str]   names in label order: the dataset's categories (sorted by id, as the
        data pipeline labels them), else the checkpoint's, else COCO's 80 when the class count
        is 80, else "class N".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from atss_cli.engine.coco_results import load_coco_categories, write_json_atomic
from atss_cli.errors import AtssError

JPEG_SUFFIXES = (".jpg", ".jpeg")


def class_names_for(num_classes: int, *, coco_root: str | Path | None = None, split: str = "val2017",
                    checkpoint_names: Sequence[str] | None = None) -> list[str]:
    if coco_root is not None:
        from atss_cli.data import load_split

        names = [str(c["name"]) for c in load_split(Path(coco_root), split).categories]
        if len(names) != num_classes:
            raise AtssError(f"--coco {coco_root}: {len(names)} categories but the checkpoint predicts "
                            f"{num_classes} classes")
        return names
    if checkpoint_names is not None and len(checkpoint_names) == num_classes:
        return [str(n) for n in checkpoint_names]
    if num_classes == 80:
        return [c["name"] for c in load_coco_categories()]
    return [f"class {i}" for i in range(num_classes)]


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


def predict_files(model, paths: Sequence[str | Path], *, device, out_dir: str | Path,
                  class_names: Sequence[str] | None = None, scale: tuple[int, int] = (1333, 800),
                  score_thr: float = 0.3, amp: str | None = None,
                  on_skip: Callable[[Path, str], None] | None = None,
                  on_image: Callable[[dict], None] | None = None,
                  detections_name: str = "detections.json") -> dict:
    import torch

    from atss_cli.data.transforms import DecodeError, bgr_to_rgb_tensor, read_image, test_input
    from atss_cli.engine.draw import class_name, draw_detections
    from atss_cli.engine.evaluate import amp_context, unwrap_model

    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    taken: set[str] = set()
    records: list[dict] = []
    skipped: list[dict] = []
    try:
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
            tensor, img_shape, (sx, sy) = test_input(bgr, tuple(scale))
            with torch.no_grad(), amp_context(device, amp):
                det = net.predict(tensor[None].to(device), [img_shape], [(sx, sy)])[0]
            boxes = det["boxes"].detach().float().cpu()
            scores = det["scores"].detach().float().cpu()
            labels = det["labels"].detach().cpu()
            keep = scores >= score_thr
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            order = torch.argsort(scores, descending=True, stable=True)
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            dst = _output_path(out, src, taken)
            image = bgr_to_rgb_tensor(bgr)
            del bgr
            _write_image(draw_detections(image, boxes, scores, labels, class_names), dst)
            record = {"file": str(src), "output": str(dst), "width": w, "height": h,
                      "detections": [{"box": [float(v) for v in b], "score": float(s), "label": int(lab),
                                      "name": class_name(int(lab), class_names)}
                                     for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]}
            records.append(record)
            if on_image is not None:
                on_image(record)
    finally:
        net.train(was_training)
    summary = {"score_thr": float(score_thr), "scale": list(scale),
               "class_names": list(class_names) if class_names is not None else None,
               "images": records, "skipped": skipped}
    det_path = write_json_atomic(out / detections_name, summary)
    summary["detections"] = str(det_path)
    return summary


def predict_checkpoint(checkpoint: str | Path, images: Sequence[str | Path], out_dir: str | Path, *,
                       coco: str | Path | None = None, split: str = "val2017", device: str = "auto",
                       scale: tuple[int, int] | None = None, score_thr: float = 0.3,
                       model_overrides: dict | None = None, amp: str | None = None,
                       on_skip: Callable[[Path, str], None] | None = None,
                       on_image: Callable[[dict], None] | None = None) -> dict:
    """`atss predict` as a function: the class count comes from the checkpoint's classifier, the
    architecture from its config (else R50 defaults, or `model_overrides`), the names from
    `class_names_for`, the test scale from `scale`, else the checkpoint config, else (1333, 800).
    Returns `predict_files`'s summary plus "checkpoint"."""
    from atss_cli.engine.device import resolve_device
    from atss_cli.engine.inference import DEFAULT_SCALE, build_inference_model, read_checkpoint_info

    if not 0.0 <= score_thr <= 1.0:
        raise AtssError(f"--score-thr must be between 0 and 1, got {score_thr}")
    dev = resolve_device(device)
    info = read_checkpoint_info(checkpoint)
    if info.num_classes is None:
        raise AtssError(f"{checkpoint} has no bbox_head.atss_cls.weight: not an ATSS checkpoint")
    names = class_names_for(info.num_classes, coco_root=coco, split=split, checkpoint_names=info.class_names)
    model = build_inference_model(checkpoint, num_classes=info.num_classes, device=dev,
                                  overrides=model_overrides, info=info)
    use_scale = tuple(scale) if scale else (info.scale or DEFAULT_SCALE)
    summary = predict_files(model, images, device=dev, out_dir=out_dir, class_names=names, scale=use_scale,
                            score_thr=score_thr, amp=amp, on_skip=on_skip, on_image=on_image)
    summary["checkpoint"] = str(checkpoint)
    return summary
