"""The images where the detector goes most wrong, drawn.

    rank_images(gt, dets, tide, score_thresh) -> list of (image index, rank, n_fp, n_missed)
    draw_gallery(gt, dets, tide, images_dir, out_dir, *, score_thresh=0.3, max_images=16,
                 max_side=640) -> dict

An image's rank is the sum of its false positives' scores (TIDE's matching, detections with
score >= score_thresh, ignored ones left out) plus its missed ground truths (TIDE's false
negatives): a confident wrong box or a missed object costs about one unit of lost precision or
recall. The top `max_images` with a rank > 0 are drawn with OpenCV, scaled to at most
`max_side` pixels, as JPEG files: missed ground truths in orange, false positives in red and
true positives in thin green, each captioned with its class name (and score).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atss_cli.evaluation.analysis.inputs import Detections, GroundTruth

RED, ORANGE, GREEN = (40, 40, 230), (0, 150, 255), (60, 180, 60)   # BGR


def rank_images(gt: GroundTruth, dets: Detections, tide, score_thresh: float):
    pi = tide.per_image
    order = pi["det_order"]
    fp = ~pi["tp"] & ~pi["ignored"] & (dets.score[order] >= score_thresh)
    img = dets.img[order]
    fp_score = np.bincount(img[fp], weights=dets.score[order][fp], minlength=gt.num_images)
    n_fp = np.bincount(img[fp], minlength=gt.num_images)
    n_miss = np.bincount(gt.img[pi["fn_gt"]], minlength=gt.num_images)
    rank = fp_score + n_miss
    top = np.lexsort((np.arange(gt.num_images), -rank))
    return [(int(i), float(rank[i]), int(n_fp[i]), int(n_miss[i])) for i in top if rank[i] > 0]


def draw_gallery(gt: GroundTruth, dets: Detections, tide, images_dir, out_dir, *, score_thresh: float = 0.3,
                 max_images: int = 16, max_side: int = 640) -> dict:
    import cv2

    from atss_cli.atomic import atomic_write_bytes

    names = {int(c): n for c, n in zip(gt.cat_ids, gt.cat_names)}
    pi = tide.per_image
    order = pi["det_order"]
    d_img = dets.img[order]
    shown = dets.score[order] >= score_thresh
    fn = np.zeros(len(gt.img), bool)
    fn[pi["fn_gt"]] = True
    out_dir = Path(out_dir)
    entries, unreadable = [], 0
    for i, rank, n_fp, n_miss in rank_images(gt, dets, tide, score_thresh):
        if len(entries) >= max_images:
            break
        image = cv2.imread(str(Path(images_dir) / gt.file_names[i]), cv2.IMREAD_COLOR)
        if image is None:
            unreadable += 1
            continue
        s = min(1.0, max_side / max(image.shape[:2]))
        if s < 1.0:
            image = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s)),
                               interpolation=cv2.INTER_AREA)
        sel = np.flatnonzero((d_img == i) & shown & ~pi["ignored"])
        for j in sel[::-1]:   # lowest score first, so confident boxes lie on top
            k = order[j]
            tp = bool(pi["tp"][j])
            _box(image, dets.box[k] * s, GREEN if tp else RED, 1 if tp else 2,
                 None if tp else f"{names.get(int(dets.cls[k]), dets.cls[k])} {dets.score[k]:.2f}")
        for g in np.flatnonzero((gt.img == i) & fn):
            _box(image, gt.box[g] * s, ORANGE, 2, f"missed {names.get(int(gt.cls[g]), gt.cls[g])}")
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            unreadable += 1
            continue
        name = f"gallery/{len(entries):03d}_{int(gt.image_ids[i])}.jpg"
        atomic_write_bytes(out_dir / name, data.tobytes())
        entries.append({"image_id": int(gt.image_ids[i]), "file_name": gt.file_names[i], "picture": name,
                        "rank": round(rank, 4), "false_positives": n_fp, "missed": n_miss})
    return {"images": entries, "unreadable": unreadable, "score_thresh": score_thresh,
            "rank": "sum of false-positive scores + missed ground truths"}


def _box(image, xywh, color, width, caption):
    import cv2

    x, y, w, h = (float(v) for v in xywh)
    p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
    cv2.rectangle(image, p1, p2, color, width, cv2.LINE_AA)
    if caption:
        caption = caption.encode("ascii", "replace").decode()   # Hershey fonts draw ASCII only
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(p1[1], th + base + 1)
        cv2.rectangle(image, (p1[0], ty - th - base - 1), (p1[0] + tw + 2, ty), color, -1)
        cv2.putText(image, caption, (p1[0] + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
