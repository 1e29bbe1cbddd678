"""`atss eval` end to end through the CLI, and `evaluate()` with a ground-truth oracle model.

A tiny random-init checkpoint (ResNet-18, 32-wide FPN, 64-wide head, its classifier bias at 0 so
that it does produce boxes) on a 6-image synthetic split: the table, the detections file and
the metrics JSON; two gloo processes give every image exactly once; the ground truth fed
through the real loader and `evaluate` scores AP 1.0; bad flags and files are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atss_cli.evaluation.cocoeval import METRIC_NAMES
from cli_run import assert_one_line_error, atss

# `tiny` (the 6-image split and the random checkpoint): tests/conftest.py, shared with test_predict_cli.


def test_eval_tiny_checkpoint_prints_table_and_writes_files(tiny, tmp_path):
    coco, ckpt = tiny
    results, metrics_file = tmp_path / "dets.json", tmp_path / "metrics.json"
    proc = atss("eval", "--coco", coco, "--checkpoint", ckpt, "--device", "cpu", "--workers", 0,
                "--results", results, "--json", metrics_file, "--per-class")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for name in METRIC_NAMES:
        assert f" {name} " in proc.stdout, name
    metrics = json.loads(metrics_file.read_text())
    assert all(isinstance(metrics[name], float) for name in METRIC_NAMES)
    assert metrics["scale"] == [128, 128] and metrics["model"]["depth"] == 18  # from the checkpoint config
    assert metrics["num_images"] == 6
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    assert set(metrics["per_class"]) == {c["name"] for c in ann["categories"]}
    dets = json.loads(results.read_text())
    assert len(dets) == metrics["num_detections"] > 0
    assert {d["image_id"] for d in dets} <= {im["id"] for im in ann["images"]}
    assert {d["category_id"] for d in dets} <= {c["id"] for c in ann["categories"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    for d in dets:  # xywh inside the original image
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3


def test_eval_two_gloo_processes_cover_every_image_once(tiny, tmp_path):
    coco, ckpt = tiny
    results, metrics_file = tmp_path / "dets.json", tmp_path / "metrics.json"
    proc = atss("eval", "--coco", coco, "--checkpoint", ckpt, "--device", "cpu", "--nproc", 2, "--workers", 0,
                "--results", results, "--json", metrics_file, "--evaluator", "pycocotools")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" mAP_50 ") == 1  # only rank 0 prints
    metrics = json.loads(metrics_file.read_text())
    assert metrics["world_size"] == 2 and metrics["num_images"] == 6
    dets = json.loads(results.read_text())
    per_image: dict[int, int] = {}
    for d in dets:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    assert set(per_image) == {im["id"] for im in ann["images"]}
    assert max(per_image.values()) <= 100  # no image's detections twice


class Oracle(torch.nn.Module):
    """Answers with the ground truth of the split's images, in the test loader's order."""

    def __init__(self, cache):
        super().__init__()
        self.cache, self.next = cache, 0

    def predict(self, images, img_shapes, scale_factors):
        out = []
        for _ in range(images.shape[0]):
            i, self.next = self.next, self.next + 1
            boxes = torch.from_numpy(self.cache.boxes(i).copy())
            out.append({"boxes": boxes, "scores": torch.linspace(1.0, 0.5, len(boxes)),
                        "labels": torch.from_numpy(self.cache.labels(i).copy())})
        return out


@pytest.mark.parametrize("evaluator", ["faster-coco-eval", "pycocotools"])
def test_ground_truth_through_loader_and_evaluate_scores_ap_1(tiny, tmp_path, evaluator):
    from atss_cli.data import load_split
    from atss_cli.evaluation.evaluate import evaluate

    coco, _ = tiny
    cache = load_split(coco, "val2017", cache_dir=tmp_path / "cache")
    results = tmp_path / "gt.json"
    metrics = evaluate(Oracle(cache), cache, device="cpu", workers=0, scale=(128, 128), evaluator=evaluator,
                       per_class=True, results_path=results)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP_50"] == pytest.approx(1.0)
    assert metrics["AR_100"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) or v == -1.0 for k, v in metrics["per_class"].items())
    assert len(json.loads(results.read_text())) == metrics["num_detections"] > 0


def test_eval_checkpoint_for_another_class_count_is_an_error(tiny, tmp_path):
    coco, ckpt = tiny
    blob = torch.load(ckpt, weights_only=True)
    for key in ("bbox_head.atss_cls.weight", "bbox_head.atss_cls.bias"):
        blob["state_dict"][key] = blob["state_dict"][key][:2].clone()
    other = tmp_path / "two_classes.pth"
    torch.save(blob, other)
    for procs in ("1", "2"):  # with 2 processes the launcher checks first: one error, not one per rank
        proc = atss("eval", "--coco", coco, "--checkpoint", other, "--device", "cpu", "--workers", 0,
                    "--results", tmp_path / "r.json", "--nproc", procs)
        assert_one_line_error(proc, "predicts 2 classes", "4 categories")


@pytest.mark.parametrize("extra,needle", [
    (["--split", "test2017"], "test2017"),
    (["--scale", "big"], "--scale"),
    (["--evaluator", "detectron"], "--evaluator"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "cuda"], "cuda"),
    (["--gpus", "2"], "--gpus"),
    (["--depth", "7"], "depth"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_eval_bad_flags_are_one_line_errors(tiny, tmp_path, extra, needle):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    coco, ckpt = tiny
    proc = atss("eval", "--coco", coco, "--checkpoint", ckpt, "--workers", 0, "--results", tmp_path / "r.json",
                *extra)
    assert_one_line_error(proc, needle)


def test_eval_missing_and_broken_files_are_one_line_errors(tiny, tmp_path):
    coco, ckpt = tiny
    assert_one_line_error(atss("eval", "--coco", tmp_path / "nope", "--checkpoint", ckpt), "nope")
    assert_one_line_error(atss("eval", "--coco", coco, "--checkpoint", tmp_path / "none.pth"), "none.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert_one_line_error(atss("eval", "--coco", coco, "--checkpoint", garbage, "--device", "cpu"), "garbage.pth")
    assert_one_line_error(atss("eval", "--coco", coco, "--checkpoint", ckpt, "--results", tmp_path), "--results")
    assert_one_line_error(atss("eval", "--checkpoint", ckpt), "--coco")


def _gt_as_results(coco: Path) -> tuple[list[dict], dict]:
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    cats = {c["id"] for c in ann["categories"]}
    # The GT the evaluator scores: known categories, not crowd, not marked ignore.
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in ann["annotations"]
            if a["category_id"] in cats and not a.get("iscrowd", 0) and not a.get("ignore", 0)]
    return dets, ann


@pytest.mark.parametrize("evaluator", ["faster-coco-eval", "pycocotools"])
def test_eval_ground_truth_results_file_scores_ap_1_through_cli(tiny, tmp_path, evaluator):
    coco, _ = tiny
    dets, _ = _gt_as_results(coco)
    results, metrics_file = tmp_path / "gt.json", tmp_path / "m.json"
    results.write_text(json.dumps(dets))
    proc = atss("eval", "--coco", coco, "--detections", results, "--evaluator", evaluator, "--json", metrics_file)
    assert proc.returncode == 0, proc.stderr
    assert " mAP " in proc.stdout and "1.000" in proc.stdout
    metrics = json.loads(metrics_file.read_text())
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP_50"] == pytest.approx(1.0)
    assert metrics["AR_100"] == pytest.approx(1.0)


def test_eval_both_evaluators_agree_through_cli(tiny, tmp_path):
    coco, _ = tiny
    dets, ann = _gt_as_results(coco)
    gen = torch.Generator().manual_seed(0)
    noisy = []
    for d in dets:  # jittered copies with random scores and some wrong classes, plus a false positive each
        for k in range(3):
            x, y, w, h = d["bbox"]
            j = (torch.randn(4, generator=gen) * 0.1).tolist()
            cat = d["category_id"] if k < 2 else ann["categories"][k % len(ann["categories"])]["id"]
            noisy.append({"image_id": d["image_id"], "category_id": cat,
                          "bbox": [x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])],
                          "score": float(torch.rand(1, generator=gen))})
        noisy.append({"image_id": d["image_id"], "category_id": d["category_id"], "bbox": [1.0, 1.0, 20.0, 20.0],
                      "score": float(torch.rand(1, generator=gen))})
    results = tmp_path / "noisy.json"
    results.write_text(json.dumps(noisy))
    numbers = {}
    for evaluator in ("faster-coco-eval", "pycocotools"):
        out = tmp_path / f"{evaluator}.json"
        proc = atss("eval", "--coco", coco, "--detections", results, "--evaluator", evaluator, "--json", out)
        assert proc.returncode == 0, proc.stderr
        numbers[evaluator] = json.loads(out.read_text())
    assert 0.0 < numbers["pycocotools"]["mAP"] < 1.0
    for name in METRIC_NAMES:
        assert numbers["faster-coco-eval"][name] == pytest.approx(numbers["pycocotools"][name], abs=1e-12), name


def test_eval_detections_file_errors_are_one_line(tiny, tmp_path):
    coco, ckpt = tiny
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{")
    assert_one_line_error(atss("eval", "--coco", coco, "--detections", bad_json), "not a JSON file")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    assert_one_line_error(atss("eval", "--coco", coco, "--detections", wrong), "record 0")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert_one_line_error(atss("eval", "--coco", coco, "--detections", foreign), "not in the annotation file")
    assert_one_line_error(atss("eval", "--coco", coco), "--checkpoint")
    assert_one_line_error(atss("eval", "--coco", coco, "--checkpoint", ckpt, "--detections", foreign), "one of them")
