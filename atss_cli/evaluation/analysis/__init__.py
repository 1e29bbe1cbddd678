"""What a detector gets wrong: `atss eval --analyze DIR` as a function.

    from atss_cli.evaluation.analysis import analyze
    result = analyze(ground_truth, detections, out_dir, images_dir=None, name=None,
                     confusion_iou=0.5, confusion_score=0.3, gallery_size=16)

Inputs are plain data: `ground_truth` a COCO annotation file (path) or its loaded dict (what
COCOeval scores against; class names come from its "categories"), `detections` a COCO results
file (path) or the list of records, `images_dir` the folder the "file_name" values are
relative to (None: no gallery). Writes into `out_dir` and returns the analysis.json dict.
Nothing here prints. Modules: inputs (numpy columns), batches (padded per-image blocks, IoU),
pr_curves (COCOeval's precision array), confusion, tide, gallery, figures, report.

Files in out_dir: analysis.json, report.html, pr_all.png, pr_per_class.png, per_class_ap.png,
confusion.png, tide.png, gallery/NNN_<image id>.jpg.

analysis.json:
    version              1
    inputs               {name, num_images, num_annotations, num_crowd, num_detections,
                          dropped_detections (on images not in the ground truth), categories:
                          [{id, name}]}
    coco                 COCO's 12 numbers {mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l, AR_1,
                          AR_10, AR_100, AR_s, AR_m, AR_l} (-1: nothing to measure)
    pr                   {recall: the 101 recall points, all_classes: curves} where curves is
                          {"0.50" | "0.75" | "mean": {"all" | "small" | "medium" | "large":
                          [101 precisions]}} (-1 where undefined; maxDets 100; see pr_curves)
    per_class            [{category_id, name, ap, ap50, ap75, ap_small, ap_medium, ap_large,
                          num_gt (non-crowd boxes), num_detections, curves}] in the dataset's
                          category order (-1: no ground truth)
    confusion            {iou_thresh, score_thresh, labels (class names + "background"),
                          category_ids, matrix [K+1][K+1] (rows ground truth, columns detected),
                          top_confusions [[gt name, detected name, count]] (largest 10 off the
                          diagonal, background included)}
    tide                 {pos_thresh, bg_thresh, max_dets, ap50, dap {Cls, Loc, Both, Dupe, Bkg,
                          Miss}, special_dap {FalsePos, FalseNeg}, counts {same keys as dap}},
                          tidecv's numbers (0-100 points; see tide)
    gallery              {images: [{image_id, file_name, picture (path in out_dir), rank,
                          false_positives, missed}], unreadable, score_thresh, rank (what it
                          ranks by)} or {skipped: why, images: []}
    files                {tide, pr_all, pr_per_class, per_class_ap, confusion, report}: names in
                          out_dir
    seconds              {load, cocoeval, tide, confusion, figures, gallery, total}
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from atss_cli.errors import AtssError

from atss_cli.evaluation.cocoeval import METRIC_NAMES  # noqa: E402 - COCO's 12 numbers, named once

FILES = {"tide": "tide.png", "pr_all": "pr_all.png", "pr_per_class": "pr_per_class.png",
         "per_class_ap": "per_class_ap.png", "confusion": "confusion.png", "report": "report.html"}


def analyze(ground_truth, detections, out_dir, *, images_dir=None, name: str | None = None,
            confusion_iou: float = 0.5, confusion_score: float = 0.3, gallery_size: int = 16) -> dict:
    from atss_cli.atomic import atomic_write_json
    from atss_cli.evaluation.analysis import figures
    from atss_cli.evaluation.analysis.confusion import confusion_matrix
    from atss_cli.evaluation.analysis.gallery import draw_gallery
    from atss_cli.evaluation.analysis.inputs import load_detections, load_ground_truth
    from atss_cli.evaluation.analysis.pr_curves import pr_curves, run_cocoeval
    from atss_cli.evaluation.analysis.report import write_report
    from atss_cli.evaluation.analysis.tide import tide_breakdown

    if not 0.0 < confusion_iou <= 1.0:
        raise AtssError(f"confusion IoU must be in (0, 1], got {confusion_iou}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AtssError(f"{out_dir} is a file; --analyze takes a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds = {}
    if name is None:
        name = Path(ground_truth).name if isinstance(ground_truth, (str, Path)) else "ground truth"
    gt = load_ground_truth(ground_truth)
    if isinstance(detections, (str, Path)):
        import json

        with open(detections) as f:
            detections = json.load(f)
    dets = load_detections(detections, gt)
    known = {int(i) for i in gt.image_ids}
    records = detections if not dets.dropped else [r for r in detections if int(r["image_id"]) in known]
    seconds["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    coco_eval = run_cocoeval(gt.dataset, records)
    names = {int(c): n for c, n in zip(gt.cat_ids, gt.cat_names)}
    pr = pr_curves(coco_eval, names)
    seconds["cocoeval"] = time.perf_counter() - t

    t = time.perf_counter()
    tide = tide_breakdown(gt, dets)
    seconds["tide"] = time.perf_counter() - t

    t = time.perf_counter()
    confusion = confusion_matrix(gt, dets, iou_thresh=confusion_iou, score_thresh=confusion_score)
    confusion["top_confusions"] = _top_confusions(confusion)
    seconds["confusion"] = time.perf_counter() - t

    n_gt = dict(zip(*np.unique(gt.cls[~gt.crowd], return_counts=True)))
    n_det = dict(zip(*np.unique(dets.cls, return_counts=True)))
    per_class = [{**{k: v for k, v in c.items() if k != "curves"},
                  "num_gt": int(n_gt.get(c["category_id"], 0)),
                  "num_detections": int(n_det.get(c["category_id"], 0)), "curves": c["curves"]}
                 for c in pr["per_class"]]
    result = {
        "version": 1,
        "inputs": {"name": name, "num_images": gt.num_images, "num_annotations": len(gt.img),
                   "num_crowd": int(gt.crowd.sum()), "num_detections": len(dets.img),
                   "dropped_detections": dets.dropped,
                   "categories": [{"id": int(c), "name": n} for c, n in zip(gt.cat_ids, gt.cat_names)]},
        "coco": dict(zip(METRIC_NAMES, pr["stats"])),
        "pr": {"recall": pr["recall"], "all_classes": pr["all_classes"]},
        "per_class": per_class,
        "confusion": confusion,
        "tide": {"pos_thresh": 0.5, "bg_thresh": 0.1, "max_dets": 100, **tide.as_dict()},
        "files": dict(FILES),
    }
    t = time.perf_counter()
    figures.plot_tide(result["tide"], out_dir / FILES["tide"])
    figures.plot_pr_all(pr, out_dir / FILES["pr_all"])
    figures.plot_pr_per_class(pr, out_dir / FILES["pr_per_class"])
    figures.plot_per_class_ap(pr, out_dir / FILES["per_class_ap"])
    figures.plot_confusion(confusion, out_dir / FILES["confusion"])
    seconds["figures"] = time.perf_counter() - t

    t = time.perf_counter()
    if images_dir is None:
        result["gallery"] = {"skipped": "gallery skipped: no images on disk (give the images folder)",
                             "images": []}
    elif not Path(images_dir).is_dir():
        result["gallery"] = {"skipped": f"gallery skipped: {images_dir} is not a folder", "images": []}
    else:
        result["gallery"] = draw_gallery(gt, dets, tide, images_dir, out_dir, score_thresh=confusion_score,
                                         max_images=gallery_size)
        if not result["gallery"]["images"] and result["gallery"]["unreadable"]:
            result["gallery"]["skipped"] = (f"gallery skipped: none of the images could be read from "
                                            f"{images_dir}")
    seconds["gallery"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    write_report(result, out_dir)
    atomic_write_json(out_dir / "analysis.json", result, indent=1)
    return result


def _top_confusions(confusion: dict, n: int = 10) -> list:
    m = np.asarray(confusion["matrix"])
    labels = confusion["labels"]
    off = m.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    out = []
    for f in flat:
        i, j = divmod(int(f), m.shape[1])
        if off[i, j] <= 0:
            break
        out.append([labels[i], labels[j], int(off[i, j])])
    return out
