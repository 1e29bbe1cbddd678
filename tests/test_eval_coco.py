"""COCOeval wrapper and inference bookkeeping, on hand-made COCO files (no model, no images).

Ground truth given back as detections scores AP 1.0; faster-coco-eval and pycocotools give
the same 12 numbers; no detections give zeros; labels map back to category ids; an image that
a padded sampler repeats is counted once.
"""

import json
import math
import random

import numpy as np
import pytest
import torch

from atss_cli.data.categories import load_coco_categories
from atss_cli.data.coco_results import detections_to_coco, write_json_atomic
from atss_cli.evaluation.cocoeval import METRIC_NAMES, coco_evaluate
from atss_cli.evaluation.gather import run_inference
from atss_cli.errors import AtssError

CATS = ((1, "cat"), (3, "dog"), (7, "bird"))


def make_gt(n_images=12, seed=0, crowd=True):
    """Boxes of every size (small, medium, large areas), a few crowd boxes, some empty images."""
    rng = random.Random(seed)
    images, anns = [], []
    for i in range(n_images):
        w_img, h_img = rng.randint(200, 640), rng.randint(200, 640)
        images.append({"id": 100 + i, "width": w_img, "height": h_img, "file_name": f"{i:04d}.jpg"})
        for _ in range(rng.randint(0, 6)):
            # log-uniform sides: small (< 32^2), medium and large areas all occur
            w, h = (math.exp(rng.uniform(math.log(4), math.log(side / 2))) for side in (w_img, h_img))
            x, y = rng.uniform(0, w_img - w), rng.uniform(0, h_img - h)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": rng.choice(CATS)[0],
                         "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(crowd and rng.random() < 0.05)})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": n} for c, n in CATS]}


def gt_as_detections(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]


def noisy_detections(gt, seed=1, per_gt=3, false_pos=20):
    rng = random.Random(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(per_gt):
            cat = a["category_id"] if rng.random() < 0.7 else rng.choice(CATS)[0]
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [x + rng.gauss(0, 0.1 * w), y + rng.gauss(0, 0.1 * h), w * rng.uniform(0.8, 1.2),
                                  h * rng.uniform(0.8, 1.2)], "score": rng.random()})
    for _ in range(false_pos):
        img = rng.choice(gt["images"])
        dets.append({"image_id": img["id"], "category_id": rng.choice(CATS)[0],
                     "bbox": [rng.uniform(0, 100), rng.uniform(0, 100), rng.uniform(5, 80), rng.uniform(5, 80)],
                     "score": rng.random()})
    return dets


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "instances_val.json"
    path.write_text(json.dumps(make_gt()))
    return path


@pytest.mark.parametrize("evaluator", ["faster-coco-eval", "pycocotools"])
def test_ground_truth_as_detections_scores_ap_1(ann_file, evaluator):
    gt = json.loads(ann_file.read_text())
    metrics = coco_evaluate(ann_file, gt_as_detections(gt), evaluator=evaluator, per_class=True)
    assert list(metrics)[:12] == list(METRIC_NAMES)
    for name in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "bird": pytest.approx(1.0)}


def test_both_evaluators_give_the_same_12_numbers(ann_file):
    gt = json.loads(ann_file.read_text())
    dets = noisy_detections(gt)
    fast = coco_evaluate(ann_file, dets, evaluator="faster-coco-eval", per_class=True)
    ref = coco_evaluate(ann_file, dets, evaluator="pycocotools", per_class=True)
    # a result that exercises the matching in every area range
    assert all(0.05 < ref[name] < 0.95 for name in METRIC_NAMES), ref
    for name in METRIC_NAMES:
        assert fast[name] == pytest.approx(ref[name], abs=1e-12), name
    for name in ref["per_class"]:
        assert fast["per_class"][name] == pytest.approx(ref["per_class"][name], abs=1e-12), name


@pytest.mark.parametrize("evaluator", ["faster-coco-eval", "pycocotools"])
def test_no_detections_give_zeros(ann_file, evaluator):
    metrics = coco_evaluate(ann_file, [], evaluator=evaluator, per_class=True)
    assert all(metrics[name] == 0.0 for name in METRIC_NAMES)
    assert set(metrics["per_class"].values()) == {0.0}


def test_evaluation_prints_nothing_and_leaves_detections_alone(ann_file, capfd):
    gt = json.loads(ann_file.read_text())
    dets = noisy_detections(gt)
    before = json.dumps(dets)
    for evaluator in ("faster-coco-eval", "pycocotools"):
        coco_evaluate(ann_file, dets, evaluator=evaluator)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert json.dumps(dets) == before


def test_unknown_image_ids_and_evaluator_are_errors(ann_file):
    with pytest.raises(AtssError, match="not in the annotation file"):
        coco_evaluate(ann_file, [{"image_id": 999999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(AtssError, match="unknown evaluator"):
        coco_evaluate(ann_file, [], evaluator="detectron")
    with pytest.raises(AtssError, match="not found"):
        coco_evaluate(ann_file.parent / "missing.json", [])


def test_labels_map_back_to_category_ids_and_boxes_to_xywh():
    recs = detections_to_coco(5, torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 3.0]]),
                              torch.tensor([0.9, 0.25]), torch.tensor([2, 0]), [1, 3, 7])
    assert recs == [{"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
                    {"image_id": 5, "category_id": 1, "bbox": [0.5, 1.5, 2.0, 1.5], "score": 0.25}]
    assert detections_to_coco(5, np.zeros((0, 4)), np.zeros(0), np.zeros(0), {0: 1}) == []
    cats = load_coco_categories()
    assert len(cats) == 80 and cats[0] == {"id": 1, "name": "person"} and cats[-1] == {"id": 90, "name": "toothbrush"}


def test_atomic_json_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json_atomic(path, [1, 2])
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


class FakeDetector(torch.nn.Module):
    """predict() returns one box per image, derived from its image id (stored in pixel 0)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def predict(self, images, img_shapes, scale_factors):
        assert not self.training and not torch.is_grad_enabled()  # eval mode, no autograd
        out = []
        for img, (sx, sy) in zip(images, scale_factors):
            k = float(img[0, 0, 0])
            boxes = torch.tensor([[k, k, k + 10, k + 20], [0.0, 0.0, 4.0, 4.0]]) * torch.tensor([sx, sy, sx, sy])
            out.append({"boxes": boxes / torch.tensor([sx, sy, sx, sy]), "scores": torch.tensor([0.5, 0.75]),
                        "labels": torch.tensor([int(k) % 3, 1])})
        return out


def fake_batches(image_ids, batch_size=2):
    for i in range(0, len(image_ids), batch_size):
        ids = image_ids[i:i + batch_size]
        images = torch.zeros(len(ids), 3, 32, 32)
        for j, image_id in enumerate(ids):
            images[j, 0, 0, 0] = image_id
        yield {"images": images, "targets": [{"image_id": image_id, "img_shape": (32, 32), "ori_shape": (64, 64),
                                              "scale_factor": (0.5, 0.5)} for image_id in ids]}


def test_run_inference_maps_labels_sorts_and_counts_each_image_once():
    model = FakeDetector().train()
    # A padded sampler repeats image 4 at the end: it must be counted once.
    loader = list(fake_batches([3, 4, 1, 4]))
    dets = run_inference(model, loader, "cpu", label_to_cat_id=[1, 3, 7])
    assert model.training  # given back in the mode it came in
    assert [d["image_id"] for d in dets] == [1, 1, 3, 3, 4, 4]
    assert [d["score"] for d in dets] == [0.75, 0.5] * 3
    first = dets[1]
    assert first["bbox"] == pytest.approx([1.0, 1.0, 10.0, 20.0]) and first["category_id"] == 3
