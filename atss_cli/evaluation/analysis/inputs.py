"""The analysis' inputs as numpy columns: COCO ground truth and COCO box results.

    load_ground_truth(gt) -> GroundTruth       gt: a path to a COCO JSON or the loaded dict
    load_detections(dets, gt) -> Detections    dets: a path to a results JSON or a list of records

Boxes stay COCO's [x, y, w, h] in float64, as pycocotools and tidecv read them, so IoUs are
the same numbers bit for bit. Images are numbered 0..I-1 in the order of the JSON's "images";
detections on an image the ground truth does not hold are dropped and counted (COCOeval
refuses them; TIDE skips them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atss_cli.errors import AtssError


@dataclass
class GroundTruth:
    dataset: dict              # the COCO dict itself (given to COCOeval)
    image_ids: np.ndarray      # int64 [I] COCO image ids, in JSON order
    file_names: list[str]      # [I]
    widths: np.ndarray         # int64 [I]
    heights: np.ndarray        # int64 [I]
    cat_ids: np.ndarray        # int64 [K] category ids in JSON order
    cat_names: list[str]       # [K], from the JSON
    img: np.ndarray            # int64 [N] image index of each annotation
    cls: np.ndarray            # int64 [N] category id
    box: np.ndarray            # float64 [N, 4] xywh
    crowd: np.ndarray          # bool [N] iscrowd: an ignore region, never a target (COCOeval's bbox
                               # "ignore" is iscrowd alone; tidecv reads the same field)
    ann_ids: np.ndarray        # int64 [N]

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


@dataclass
class Detections:
    img: np.ndarray            # int64 [D] image index
    cls: np.ndarray            # int64 [D] category id
    box: np.ndarray            # float64 [D, 4] xywh
    score: np.ndarray          # float64 [D]
    dropped: int               # records on images the ground truth does not hold


def _read_json(path: Path, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as exc:
        raise AtssError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise AtssError(f"{path}: not a JSON file ({exc})") from None


def load_ground_truth(gt) -> GroundTruth:
    if isinstance(gt, (str, Path)):
        gt = _read_json(Path(gt), "annotation file")
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise AtssError("ground truth must be a COCO dict with 'images' and 'annotations'")
    images = gt["images"]
    image_ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
    index = {int(i): k for k, i in enumerate(image_ids)}
    cats = gt.get("categories") or []
    cat_ids = np.array([int(c["id"]) for c in cats], dtype=np.int64)
    anns = [a for a in gt["annotations"] if int(a["image_id"]) in index]
    n = len(anns)
    box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    return GroundTruth(
        dataset=gt, image_ids=image_ids,
        file_names=[str(im.get("file_name", im["id"])) for im in images],
        widths=np.array([int(im.get("width", 0)) for im in images], dtype=np.int64),
        heights=np.array([int(im.get("height", 0)) for im in images], dtype=np.int64),
        cat_ids=cat_ids, cat_names=[str(c.get("name", c["id"])) for c in cats],
        img=np.array([index[int(a["image_id"])] for a in anns], dtype=np.int64),
        cls=np.array([int(a["category_id"]) for a in anns], dtype=np.int64),
        box=box,
        crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        ann_ids=np.array([int(a.get("id", k)) for k, a in enumerate(anns)], dtype=np.int64))


def load_detections(dets, gt: GroundTruth) -> Detections:
    if isinstance(dets, (str, Path)):
        dets = _read_json(Path(dets), "detections file")
    if not isinstance(dets, list):
        raise AtssError("detections must be a list of COCO results")
    d = len(dets)
    image_ids = np.fromiter((r["image_id"] for r in dets), dtype=np.int64, count=d)
    order = np.argsort(gt.image_ids, kind="stable")
    pos = np.searchsorted(gt.image_ids[order], image_ids)
    pos = np.minimum(pos, max(len(order) - 1, 0))
    known = (gt.image_ids[order][pos] == image_ids) if len(order) else np.zeros(d, dtype=bool)
    img = order[pos] if len(order) else np.zeros(d, dtype=np.int64)
    cls = np.fromiter((r["category_id"] for r in dets), dtype=np.int64, count=d)
    score = np.fromiter((r["score"] for r in dets), dtype=np.float64, count=d)
    box = np.array([r["bbox"] for r in dets], dtype=np.float64).reshape(d, 4)
    return Detections(img=img[known], cls=cls[known], box=box[known], score=score[known],
                      dropped=int(d - known.sum()))
