"""Generated cases for the analysis, shared by the tests and the benchmark.

    error_case(out_dir, num_images=24, seed=0) -> dict
        Writes out_dir/gt.json, out_dir/dets.json and out_dir/images/*.png: pictures of
        coloured boxes, each ground truth a slot of one kind, so every TIDE error kind and
        every confusion-matrix cell has a known count. Returns {"gt", "dets", "images",
        "tide_counts", "confusion"} (paths and the expected numbers). Slots lie far apart
        (IoU 0 between slots); kinds: tp (exact box, score 0.9), loc (same class, shifted to
        IoU 0.30), cls (another class, exact box), both (another class at IoU 0.30 on a box a
        tp also covers), dupe (a second exact box after a tp), bkg (a box on empty ground),
        miss (no detection), crowd (a crowd region with a detection inside: ignored by AP, a
        background error in TIDE's counts, uncounted by the confusion matrix).
    scale_case(num_images=5000, dets_per_image=100, gt_per_image=7, num_classes=80, seed=0)
        -> (gt dict, detection records): COCO val2017's size (5k images, 500k detections,
        ~36k boxes), jittered copies of the ground truth plus random boxes, for the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NAMES = ["red box", "green box", "blue box", '<b>"odd" & name</b>']
COLORS = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (200, 40, 200)]   # BGR
KINDS = ("tp", "loc", "cls", "both", "dupe", "bkg", "miss", "crowd")
SIZE, CELL, SIDE = 320, 106, 60


def error_case(out_dir, num_images: int = 24, seed: int = 0) -> dict:
    import cv2

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    images, anns, dets = [], [], []
    tide = dict.fromkeys(("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"), 0)
    cm = np.zeros((k + 1, k + 1), np.int64)

    def ann(img_id, c, box, crowd=0):
        x, y, w, h = box
        anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c + 1, "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": crowd,
                     "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})

    def det(img_id, c, box, score):
        dets.append({"image_id": img_id, "category_id": c + 1, "bbox": list(box), "score": score})

    for i in range(num_images):
        img_id = 1000 + i
        picture = (rng.integers(90, 140, (SIZE, SIZE, 3))).astype(np.uint8)
        kinds = [KINDS[(i + j) % len(KINDS)] for j in range(9)]
        rng.shuffle(kinds)
        for slot, kind in enumerate(kinds[: 3 + i % 7]):
            x0, y0 = (slot % 3) * CELL + 20, (slot // 3) * CELL + 20
            box = (float(x0), float(y0), float(SIDE), float(SIDE))
            c = int(rng.integers(0, k))
            other = (c + 1 + int(rng.integers(0, k - 1))) % k
            shifted = (x0 + 32.0, float(y0), float(SIDE), float(SIDE))     # IoU 28/92 = 0.304
            if kind == "bkg":
                det(img_id, c, box, 0.95)
                tide["Bkg"] += 1
                cm[k, c] += 1
                continue
            cv2.rectangle(picture, (x0, y0), (x0 + SIDE, y0 + SIDE), COLORS[c], -1)
            if kind == "crowd":
                ann(img_id, c, box, crowd=1)
                det(img_id, c, (x0 + 5.0, y0 + 5.0, 30.0, 30.0), 0.7)
                tide["Bkg"] += 1
                continue
            ann(img_id, c, box)
            if kind in ("tp", "both", "dupe"):
                det(img_id, c, box, 0.9)
                cm[c, c] += 1
            if kind == "loc":
                det(img_id, c, shifted, 0.8)
                tide["Loc"] += 1
                cm[k, c] += 1
                cm[c, k] += 1
            elif kind == "cls":
                det(img_id, other, box, 0.8)
                tide["Cls"] += 1
                cm[c, other] += 1
            elif kind == "both":
                det(img_id, other, shifted, 0.5)
                tide["Both"] += 1
                cm[k, other] += 1
            elif kind == "dupe":
                det(img_id, c, box, 0.5)
                tide["Dupe"] += 1
                cm[k, c] += 1
            elif kind == "miss":
                tide["Miss"] += 1
                cm[c, k] += 1
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(out_dir / "images" / name), picture)
        images.append({"id": img_id, "file_name": name, "width": SIZE, "height": SIZE})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c + 1, "name": n} for c, n in enumerate(NAMES)]}
    (out_dir / "gt.json").write_text(json.dumps(gt))
    (out_dir / "dets.json").write_text(json.dumps(dets))
    return {"gt": out_dir / "gt.json", "dets": out_dir / "dets.json", "images": out_dir / "images",
            "tide_counts": tide, "confusion": cm}


def scale_case(num_images: int = 5000, dets_per_image: int = 100, gt_per_image: int = 7,
               num_classes: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_gt = rng.poisson(gt_per_image, num_images)
    gimg = np.repeat(np.arange(num_images), n_gt)
    g = len(gimg)
    gxy = rng.uniform(0, 500, (g, 2))
    gwh = rng.uniform(4, 300, (g, 2)) * rng.choice([0.1, 0.4, 1.0], (g, 1))
    gcls = rng.integers(1, num_classes + 1, g)
    crowd = rng.random(g) < 0.01
    # Detections: per image, jittered copies of its boxes (some relabelled), the rest random.
    dimg = np.repeat(np.arange(num_images), dets_per_image)
    d = len(dimg)
    starts = np.concatenate([[0], np.cumsum(n_gt)])[:-1]
    slot = np.tile(np.arange(dets_per_image), num_images)
    has = slot < 2 * n_gt[dimg]
    src = np.where(has, starts[dimg] + slot % np.maximum(n_gt[dimg], 1), 0)
    jitter = rng.normal(0, 0.15, (d, 4))
    dxy = np.where(has[:, None], gxy[src] + jitter[:, :2] * gwh[src], rng.uniform(0, 500, (d, 2)))
    dwh = np.where(has[:, None], gwh[src] * np.exp(jitter[:, 2:]), rng.uniform(4, 200, (d, 2)))
    dcls = np.where(has & (rng.random(d) < 0.85), gcls[src], rng.integers(1, num_classes + 1, d))
    score = np.round(rng.random(d) * np.where(has, 1.0, 0.4), 4)
    images = [{"id": int(i) + 1, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480}
              for i in range(num_images)]
    anns = [{"id": j + 1, "image_id": int(gimg[j]) + 1, "category_id": int(gcls[j]),
             "bbox": [round(float(v), 2) for v in (*gxy[j], *gwh[j])],
             "area": float(gwh[j, 0] * gwh[j, 1]), "iscrowd": int(crowd[j])} for j in range(g)]
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class {c}"} for c in range(1, num_classes + 1)]}
    box = np.round(np.concatenate([dxy, dwh], axis=1), 2).tolist()
    records = [{"image_id": int(i) + 1, "category_id": int(c), "bbox": b, "score": float(s)}
               for i, c, b, s in zip(dimg, dcls, box, score)]
    return gt, records
