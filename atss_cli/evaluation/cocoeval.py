"""COCOeval, bbox: the adapter to faster-coco-eval (default, C++) and pycocotools (the reference).

    coco_evaluate(ann_file, detections, *, evaluator="faster-coco-eval", per_class=False,
                  categories=None) -> dict
        COCOeval bbox over every image of `ann_file` (a path or a loaded COCO dict). Returns
        the 12 standard numbers under METRIC_NAMES ("mAP", "mAP_50", "mAP_75", "mAP_s",
        "mAP_m", "mAP_l", "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l"), as floats;
        -1.0 where COCOeval has nothing to measure (no ground truth in that area range), as
        COCOeval itself reports it. With `per_class`, also "per_class": {category name: AP
        @[.5:.95]} (-1.0 for a category without ground truth). Empty `detections` give 0.
        Both evaluators give the same numbers. COCOeval's own prints are swallowed.
    check_evaluator(name): the one place an evaluator name is checked (AtssError otherwise).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from atss_cli.errors import AtssError

METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
                "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")
METRIC_TITLES = {
    "mAP": "AP @[IoU=.50:.95, area=all, maxDets=100]",
    "mAP_50": "AP @[IoU=.50, area=all, maxDets=100]",
    "mAP_75": "AP @[IoU=.75, area=all, maxDets=100]",
    "mAP_s": "AP @[IoU=.50:.95, area=small, maxDets=100]",
    "mAP_m": "AP @[IoU=.50:.95, area=medium, maxDets=100]",
    "mAP_l": "AP @[IoU=.50:.95, area=large, maxDets=100]",
    "AR_1": "AR @[IoU=.50:.95, area=all, maxDets=1]",
    "AR_10": "AR @[IoU=.50:.95, area=all, maxDets=10]",
    "AR_100": "AR @[IoU=.50:.95, area=all, maxDets=100]",
    "AR_s": "AR @[IoU=.50:.95, area=small, maxDets=100]",
    "AR_m": "AR @[IoU=.50:.95, area=medium, maxDets=100]",
    "AR_l": "AR @[IoU=.50:.95, area=large, maxDets=100]",
}
EVALUATORS = ("faster-coco-eval", "pycocotools")




def check_evaluator(evaluator: str) -> str:
    if evaluator not in EVALUATORS:
        raise AtssError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    return evaluator


def _load_gt(ann_file, evaluator: str):
    check_evaluator(evaluator)
    if evaluator == "faster-coco-eval":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    if isinstance(ann_file, Mapping):
        gt = COCO()
        gt.dataset = dict(ann_file)
        gt.createIndex()
        return gt
    path = Path(ann_file)
    if not path.is_file():
        raise AtssError(f"annotation file not found: {path}")
    return COCO(str(path))


def _load_results(gt, detections: list[dict], evaluator: str):
    if detections:
        known = set(gt.getImgIds())
        stray = {d["image_id"] for d in detections} - known
        if stray:
            raise AtssError(f"{len(stray)} detection image ids are not in the annotation file "
                            f"(e.g. {sorted(stray)[0]})")
        # COCO.loadRes adds keys (area, id, segmentation) to the records it gets: give it copies.
        return gt.loadRes([dict(d) for d in detections])
    # An empty result set: pycocotools' loadRes cannot take one, so build the empty index.
    dt = type(gt)()
    dt.dataset = {"images": list(gt.dataset.get("images", [])), "annotations": [],
                  "categories": list(gt.dataset.get("categories", []))}
    dt.createIndex()
    return dt


def coco_evaluate(ann_file, detections: list[dict], *, evaluator: str = "faster-coco-eval",
                  per_class: bool = False, categories: Sequence[Mapping] | None = None) -> dict:
    """COCOeval bbox -> the 12 standard metrics (+ per-class AP); see the module docstring."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        gt = _load_gt(ann_file, evaluator)
        dt = _load_results(gt, detections, evaluator)
        if evaluator == "faster-coco-eval":
            from faster_coco_eval import COCOeval_faster

            coco_eval = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
        else:
            from pycocotools.cocoeval import COCOeval

            coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.imgIds = sorted(gt.getImgIds())
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = [float(s) for s in coco_eval.stats[:12]]
    metrics: dict = dict(zip(METRIC_NAMES, stats))
    if per_class:
        metrics["per_class"] = _per_class_ap(coco_eval, gt, categories)
    return metrics


def _per_class_ap(coco_eval, gt, categories) -> dict[str, float]:
    # precision: [T iou thresholds, R recall points, K categories, A areas, M maxDets]
    precision = np.asarray(coco_eval.eval["precision"])
    cat_ids = list(coco_eval.params.catIds)
    names = {int(c["id"]): str(c["name"]) for c in (categories or gt.dataset.get("categories", []))}
    out: dict[str, float] = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = names.get(int(cat_id), str(cat_id))
        if name in out:  # two categories of one name: the table keeps both
            name = f"{name} (id {int(cat_id)})"
        out[name] = float(p.mean()) if p.size else -1.0
    return out
