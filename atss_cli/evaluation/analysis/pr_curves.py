"""Precision-recall curves and per-class AP, read from COCOeval's own precision array.

    run_cocoeval(gt_dict, records) -> COCOeval_faster (evaluated and accumulated)
    pr_curves(coco_eval, cat_names) -> dict     (the "pr" and "per_class" parts of analysis.json)

COCOeval's eval["precision"] is [T=10 IoUs .50:.05:.95, R=101 recall points, K classes,
A=4 areas (all, small, medium, large), M=3 max detections (1, 10, 100)], -1 where a class has
no ground truth in that area. Everything here uses maxDets=100. A curve "averaged over IoU"
is the mean over the 10 IoUs; "all classes" is the mean over the classes with ground truth
(-1 entries left out, as COCOeval's summarize does), so the area under the averaged curve is
COCO's mAP.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

AREAS = ("all", "small", "medium", "large")
IOUS = {"0.50": 0, "0.75": 5}


def run_cocoeval(gt_dict: dict, records: list[dict]):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if records:
            dt = gt.loadRes([dict(r) for r in records])
        else:
            dt = COCO()
            dt.dataset = {"images": list(gt_dict.get("images", [])), "annotations": [],
                          "categories": list(gt_dict.get("categories", []))}
            dt.createIndex()
        ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_valid(a: np.ndarray, axis) -> np.ndarray:
    """Mean over `axis` of the entries > -1; -1 where none is."""
    valid = a > -1
    n = valid.sum(axis=axis)
    s = np.where(valid, a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), -1.0)


def pr_curves(coco_eval, cat_names: dict[int, str]) -> dict:
    p = np.asarray(coco_eval.eval["precision"], dtype=np.float64)[..., -1]   # [T, R, K, A]
    cat_ids = [int(c) for c in coco_eval.params.catIds]
    recall = [float(x) for x in coco_eval.params.recThrs]

    def curves(block):   # block [T, R, A] -> {"0.50": {area: [R]}, "0.75": ..., "mean": ...}
        out = {}
        for name, t in IOUS.items():
            out[name] = {a: _round(block[t, :, ai]) for ai, a in enumerate(AREAS)}
        mean = _mean_valid(block, axis=0)
        out["mean"] = {a: _round(mean[:, ai]) for ai, a in enumerate(AREAS)}
        return out

    overall = np.stack([_mean_valid(p[t], axis=1) for t in range(p.shape[0])])  # [T, R, A]
    per_class = []
    for k, cat in enumerate(cat_ids):
        pk = p[:, :, k, :]                                   # [T, R, A]
        ap = {a: _ap(pk[:, :, ai]) for ai, a in enumerate(AREAS)}
        per_class.append({
            "category_id": cat, "name": cat_names.get(cat, str(cat)),
            "ap": ap["all"], "ap50": _ap(pk[0:1, :, 0]), "ap75": _ap(pk[5:6, :, 0]),
            "ap_small": ap["small"], "ap_medium": ap["medium"], "ap_large": ap["large"],
            "curves": curves(pk)})
    return {"recall": recall, "all_classes": curves(overall), "per_class": per_class,
            "stats": [float(s) for s in coco_eval.stats[:12]]}


def _ap(block: np.ndarray) -> float:
    v = block[block > -1]
    return float(v.mean()) if v.size else -1.0


def _round(x) -> list[float]:
    return [round(float(v), 5) for v in x]
