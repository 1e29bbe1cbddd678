"""The TIDE breakdown of lost AP (Bolya et al., ECCV 2020), by the tidecv package's own rules.

    tide_breakdown(gt, dets, *, pos_thresh=0.5, bg_thresh=0.1, max_dets=100) -> TideResult

What tidecv 1.0.1 does (`TIDE().evaluate(COCO(gt), COCOResult(dets), mode=TIDE.BOX)`), done
for all images at once with numpy:
- per image, the first `max_dets` detections by descending score (ties in file order);
- matching: each detection in turn takes the unmatched same-class ground truth of highest
  IoU (the first of equal ones) if that IoU >= pos_thresh; crowd boxes are ignore regions:
  an unmatched detection whose crowd IoU (intersection / own area) with a crowd box of its
  class is > pos_thresh is ignored (left out of AP, still given an error type);
- every detection that is not a true positive gets one error, tested in this order: no
  ground truth in the image -> background; best same-class IoU in [bg, pos] -> localisation
  (Loc); best other-class IoU >= pos -> classification (Cls); same-class IoU >= pos with an
  already matched ground truth -> duplicate (Dupe); best IoU of any class <= bg -> background
  (Bkg); else both (Both). A ground truth neither matched nor the target of a Cls / Loc error
  on it that is still unmatched is missed (Miss);
- AP is AP50: per class, 101-point interpolated precision over recall, averaged over the
  classes that have ground truth or detections (a class with detections and no ground truth
  counts as 0);
- each dAP fixes one error type alone and is clipped at 0: Cls / Loc errors whose target is
  unmatched become true positives (only the highest-scored one per target, over both kinds;
  a Cls one in the target's class), the others leave; Dupe, Bkg and Both errors leave; Miss
  errors leave the ground-truth count. FalsePos: every false positive scored 0 and every
  true positive 1; FalseNeg: the unmatched ground truths leave the count (neither clipped).
  Equal scores keep tidecv's order: file order in the plain AP, errors before true
  positives in a fixed one.
Numbers are TIDE's 0-100 points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atss_cli.evaluation.analysis.batches import blocks, box_iou, sort_detections
from atss_cli.evaluation.analysis.inputs import Detections, GroundTruth

ERROR_NAMES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")   # tidecv's order
NONE, CLS, LOC, BOTH, DUPE, BKG = 0, 1, 2, 3, 4, 5
RECALLS = np.arange(101) / 100                                # tidecv's x / 100


@dataclass
class TideResult:
    ap50: float
    main: dict            # error name -> dAP
    special: dict         # "FalsePos" / "FalseNeg" -> dAP
    counts: dict          # error name -> number of errors
    per_image: dict = field(repr=False, default_factory=dict)   # arrays by image index (gallery)

    def as_dict(self) -> dict:
        return {"ap50": self.ap50, "dap": dict(self.main), "special_dap": dict(self.special),
                "counts": dict(self.counts)}


def _class_ap(tp: np.ndarray, num_gt: int) -> float:
    if num_gt <= 0:
        return 0.0
    if len(tp) == 0:
        return 0.0
    cs = np.cumsum(tp)
    precision = cs / np.arange(1, len(tp) + 1)
    recall = cs / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALLS, side="left")
    y = np.where(idx < len(tp), precision[np.minimum(idx, len(tp) - 1)], 0.0)
    return float(y.sum() / len(y) * 100)


def _mean_ap(classes: np.ndarray, cls, score, tp, group, visit, num_gt: dict) -> float:
    """tidecv's ClassedAPDataObject.get_mAP over `classes` (the classes it holds an object for)."""
    order = np.lexsort((visit, group, -score, cls))
    cls, tp = cls[order], tp[order]
    starts = np.searchsorted(cls, classes, side="left")
    ends = np.searchsorted(cls, classes, side="right")
    aps = []
    for c, s, e in zip(classes, starts, ends):
        n = num_gt.get(int(c), 0)
        if e == s and n == 0:
            continue   # an empty class object: not in the mean
        aps.append(_class_ap(tp[s:e], n))
    return sum(aps) / len(aps) if aps else 0.0


def tide_breakdown(gt: GroundTruth, dets: Detections, *, pos_thresh: float = 0.5, bg_thresh: float = 0.1,
                   max_dets: int = 100) -> TideResult:
    num_images = gt.num_images
    order, _ = sort_detections(dets.img, dets.score, num_images, max_dets)
    d_img, d_cls, d_box, d_score = dets.img[order], dets.cls[order], dets.box[order], dets.score[order]
    n_det = len(order)
    visit = np.arange(n_det)                      # tidecv's visiting order: image, then score
    t_sel = np.flatnonzero(~gt.crowd)
    t_sel = t_sel[np.argsort(gt.img[t_sel], kind="stable")]
    t_img, t_cls, t_box = gt.img[t_sel], gt.cls[t_sel], gt.box[t_sel]
    c_sel = np.flatnonzero(gt.crowd)
    c_sel = c_sel[np.argsort(gt.img[c_sel], kind="stable")]
    c_img, c_cls, c_box = gt.img[c_sel], gt.cls[c_sel], gt.box[c_sel]

    tp = np.zeros(n_det, bool)
    ignored = np.zeros(n_det, bool)
    err = np.zeros(n_det, np.int8)
    target = np.full(n_det, -1, np.int64)
    t_used = np.zeros(len(t_sel), bool)

    for b in blocks(num_images, d_img, t_img, (c_img,)):
        dv, gv, cidx = b.det >= 0, b.gt >= 0, b.others[0]
        cv = cidx >= 0
        di, gi, ci = np.where(dv, b.det, 0), np.where(gv, b.gt, 0), np.where(cv, cidx, 0)
        c, n_d = b.det.shape
        n_g = b.gt.shape[1]
        rows = np.arange(c)
        dcls = d_cls[di]
        if n_g:
            iou = box_iou(d_box[di], t_box[gi])
            iou = np.where(dv[:, :, None] & gv[:, None, :], iou, 0.0)      # [c, D, G]
            same = dcls[:, :, None] == t_cls[gi][:, None, :]
            cls_iou = iou * same
            used = np.zeros((c, n_g), bool)
            match = np.zeros((c, n_d), bool)
            for r in range(n_d):
                row = np.where(used, 0.0, cls_iou[:, r, :])
                j = row.argmax(axis=1)
                ok = (row[rows, j] >= pos_thresh) & dv[:, r]
                match[ok, r] = True
                used[rows[ok], j[ok]] = True
        else:
            match = np.zeros((c, n_d), bool)
            used = np.zeros((c, 0), bool)
        ign = np.zeros((c, n_d), bool)
        if cidx.shape[1]:
            ciou = box_iou(d_box[di], c_box[ci], np.ones(cidx.shape, bool))
            hit = (ciou > pos_thresh) & cv[:, None, :] & (dcls[:, :, None] == c_cls[ci][:, None, :])
            ign = hit.any(axis=2) & ~match & dv
        # Error type of every detection that is not a true positive.
        e = np.zeros((c, n_d), np.int8)
        tgt = np.full((c, n_d), -1, np.int64)
        neg = dv & ~match
        has_gt = gv.any(axis=1)
        e[neg & ~has_gt[:, None]] = BKG
        if n_g:
            pending = neg & has_gt[:, None]
            a = cls_iou.argmax(axis=2)
            av = np.take_along_axis(cls_iou, a[..., None], 2)[..., 0]
            is_loc = pending & (bg_thresh <= av) & (av <= pos_thresh)
            e[is_loc], tgt[is_loc] = LOC, b.gt[np.nonzero(is_loc)[0], a[is_loc]]
            pending &= ~is_loc
            noncls = iou * ~same
            bi = noncls.argmax(axis=2)
            bv = np.take_along_axis(noncls, bi[..., None], 2)[..., 0]
            is_cls = pending & (bv >= pos_thresh)
            e[is_cls], tgt[is_cls] = CLS, b.gt[np.nonzero(is_cls)[0], bi[is_cls]]
            pending &= ~is_cls
            dup_v = (cls_iou * used[:, None, :]).max(axis=2)
            is_dup = pending & (dup_v >= pos_thresh)
            e[is_dup] = DUPE
            pending &= ~is_dup
            is_bkg = pending & (iou.max(axis=2) <= bg_thresh)
            e[is_bkg] = BKG
            e[pending & ~is_bkg] = BOTH
        sel = b.det[dv]
        tp[sel], ignored[sel], err[sel], target[sel] = match[dv], ign[dv], e[dv], tgt[dv]
        if n_g:
            t_used[b.gt[gv]] = used[gv]

    # Cls / Loc errors on a still unmatched ground truth: the best-scored one per target is the fix.
    fixable = ((err == CLS) | (err == LOC)) & (target >= 0)
    fixable[fixable] = ~t_used[target[fixable]]
    usable = np.zeros(len(t_sel), bool)
    usable[target[fixable]] = True
    fixed_tp = np.zeros(n_det, bool)
    cand = np.flatnonzero(fixable)
    if len(cand):
        o = cand[np.lexsort((visit[cand], -d_score[cand], target[cand]))]
        first = np.ones(len(o), bool)
        first[1:] = target[o][1:] != target[o][:-1]
        fixed_tp[o[first]] = True
    missed = ~t_used & ~usable

    gt_classes, gt_counts = np.unique(t_cls, return_counts=True)
    num_gt = {int(k): int(v) for k, v in zip(gt_classes, gt_counts)}
    classes = np.union1d(gt_classes, d_cls[~ignored])
    is_err = ~tp

    def fixed_map(kind: int | None) -> float:
        keep_err = is_err & ~ignored
        cls_e, tp_e = d_cls.copy(), np.zeros(n_det, bool)
        if kind in (CLS, LOC):
            mine = err == kind
            keep_err = (keep_err & ~mine) | (mine & fixed_tp)
            tp_e = mine & fixed_tp
            if kind == CLS:
                cls_e = np.where(tp_e, t_cls[np.maximum(target, 0)], d_cls)
        elif kind in (BOTH, DUPE, BKG):
            keep_err &= err != kind
        counts = dict(num_gt)
        if kind == "miss":
            for k, v in zip(*np.unique(t_cls[missed], return_counts=True)):
                counts[int(k)] -= int(v)
        pts = np.flatnonzero(keep_err)
        cor = np.flatnonzero(tp)
        return _mean_ap(classes, np.concatenate([cls_e[pts], d_cls[cor]]),
                        np.concatenate([d_score[pts], d_score[cor]]),
                        np.concatenate([tp_e[pts], np.ones(len(cor), bool)]),
                        np.concatenate([np.zeros(len(pts)), np.ones(len(cor))]),
                        np.concatenate([visit[pts], visit[cor]]), counts)

    plain = ~ignored
    ap = _mean_ap(classes, d_cls[plain], d_score[plain], tp[plain], np.zeros(plain.sum()), visit[plain], num_gt)
    main = {}
    for name, kind in zip(ERROR_NAMES, (CLS, LOC, BOTH, DUPE, BKG, "miss")):
        main[name] = max(fixed_map(kind) - ap, 0.0)
    # FalsePos: false positives scored 0, true positives 1.
    pts = np.flatnonzero(is_err & ~ignored)
    cor = np.flatnonzero(tp)
    fp_ap = _mean_ap(classes, np.concatenate([d_cls[pts], d_cls[cor]]),
                     np.concatenate([np.zeros(len(pts)), np.ones(len(cor))]),
                     np.concatenate([np.zeros(len(pts), bool), np.ones(len(cor), bool)]),
                     np.concatenate([np.zeros(len(pts)), np.ones(len(cor))]),
                     np.concatenate([visit[pts], visit[cor]]), num_gt)
    fn_counts = dict(num_gt)
    for k, v in zip(*np.unique(t_cls[~t_used], return_counts=True)):
        fn_counts[int(k)] -= int(v)
    fn_ap = _mean_ap(classes, np.concatenate([d_cls[pts], d_cls[cor]]),
                     np.concatenate([d_score[pts], d_score[cor]]),
                     np.concatenate([np.zeros(len(pts), bool), np.ones(len(cor), bool)]),
                     np.concatenate([np.zeros(len(pts)), np.ones(len(cor))]),
                     np.concatenate([visit[pts], visit[cor]]), fn_counts)
    counts = {name: int((err[~tp] == kind).sum()) for name, kind in zip(ERROR_NAMES[:5], (CLS, LOC, BOTH, DUPE, BKG))}
    counts["Miss"] = int(missed.sum())
    per_image = {
        "det_order": order, "tp": tp, "ignored": ignored, "err": err,
        "missed_gt": t_sel[missed], "fn_gt": t_sel[~t_used],
    }
    return TideResult(ap50=ap, main=main, special={"FalsePos": fp_ap - ap, "FalseNeg": fn_ap - ap},
                      counts=counts, per_image=per_image)
