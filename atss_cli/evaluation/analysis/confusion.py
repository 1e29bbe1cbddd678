"""A confusion matrix with a background row and column.

    confusion_matrix(gt, dets, *, iou_thresh=0.5, score_thresh=0.3) -> dict

Rows are ground-truth classes, columns predicted classes, in the dataset's category order,
with "background" last on both: [K + 1, K + 1] counts. The detections with score >=
score_thresh are matched to the ground truth one to one, regardless of class, by COCOeval's
rule (useCats=0, every detection of an image, descending score): each takes the unmatched
box of highest IoU >= iou_thresh, a crowd region only when no other box qualifies (crowd
regions take any number). A matched pair counts at [gt class, detected class] (the diagonal
are true positives, the rest class confusions); an unmatched detection counts at
[background, its class]; an unmatched ground truth at [its class, background]. Detections
on a crowd region and the crowd regions themselves are not counted. The thresholds are
MMDetection's (tools/analysis_tools/confusion_matrix.py); its matrix counts a detection
once for every box it overlaps, where this one pairs them, as faster-coco-eval's
PreviewResults.compute_confusion_matrix does (the same numbers: tests check it).
"""

from __future__ import annotations

import numpy as np

from atss_cli.evaluation.analysis.batches import blocks, box_iou, sort_detections
from atss_cli.evaluation.analysis.inputs import Detections, GroundTruth


def confusion_matrix(gt: GroundTruth, dets: Detections, *, iou_thresh: float = 0.5,
                     score_thresh: float = 0.3) -> dict:
    k = len(gt.cat_ids)
    col = {int(c): i for i, c in enumerate(gt.cat_ids)}
    keep = dets.score >= score_thresh
    d_img0, d_score0 = dets.img[keep], dets.score[keep]
    order, _ = sort_detections(d_img0, d_score0, gt.num_images)
    d_img, d_box = d_img0[order], dets.box[keep][order]
    d_lab = np.array([col.get(int(c), -1) for c in dets.cls[keep][order]], dtype=np.int64)
    # Ground truth per image, COCOeval's order: the non-crowd boxes first, each in file order.
    g_order = np.lexsort((np.arange(len(gt.img)), gt.crowd, gt.img))
    g_img, g_box, g_crowd = gt.img[g_order], gt.box[g_order], gt.crowd[g_order]
    g_lab = np.array([col.get(int(c), -1) for c in gt.cls[g_order]], dtype=np.int64)
    thr = min(iou_thresh, 1 - 1e-10)

    d_match = np.full(len(d_img), -1, np.int64)
    g_matched = np.zeros(len(g_img), bool)
    for b in blocks(gt.num_images, d_img, g_img):
        dv, gv = b.det >= 0, b.gt >= 0
        if not b.gt.shape[1] or not b.det.shape[1]:
            continue
        di, gi = np.where(dv, b.det, 0), np.where(gv, b.gt, 0)
        crowd = g_crowd[gi] & gv
        iou = box_iou(d_box[di], g_box[gi], crowd)
        iou = np.where(dv[:, :, None] & gv[:, None, :], iou, -1.0)
        c, n_d = b.det.shape
        rows = np.arange(c)
        taken = np.zeros(b.gt.shape, bool)
        rev = slice(None, None, -1)
        for r in range(n_d):
            row = iou[:, r, :]
            free = gv & ~(taken & ~crowd) & (row >= thr)
            best = np.full(c, -1, np.int64)
            for pool in (free & ~crowd, free & crowd):   # a crowd region only if no box qualifies
                v = np.where(pool, row, -np.inf)[:, rev]
                j = v.shape[1] - 1 - v.argmax(axis=1)   # the last of equal IoUs, as COCOeval
                pick = (best < 0) & pool.any(axis=1)
                best[pick] = j[pick]
            ok = (best >= 0) & dv[:, r]
            taken[rows[ok], best[ok]] = True
            d_match[b.det[ok, r]] = b.gt[rows[ok], best[ok]]
        g_matched[b.gt[gv]] = taken[gv]

    m = np.zeros((k + 1, k + 1), np.int64)
    on_box = d_match >= 0
    crowd_hit = on_box & g_crowd[np.maximum(d_match, 0)]
    pair = on_box & ~crowd_hit
    gl, dl = g_lab[d_match[pair]], d_lab[pair]
    ok = (gl >= 0) & (dl >= 0)
    np.add.at(m, (gl[ok], dl[ok]), 1)
    fp = d_lab[~on_box]
    np.add.at(m, (np.full((fp >= 0).sum(), k), fp[fp >= 0]), 1)
    fn = g_lab[~g_matched & ~g_crowd]
    np.add.at(m, (fn[fn >= 0], np.full((fn >= 0).sum(), k)), 1)
    return {"iou_thresh": iou_thresh, "score_thresh": score_thresh,
            "labels": [*gt.cat_names, "background"], "category_ids": [int(c) for c in gt.cat_ids],
            "matrix": m.tolist()}
