"""Any COCO-format detection dataset (issue 8, part 1): `atss prepare` and `atss eval` on files
in a layout of their own, category ids with gaps, names from the JSON, and the bad-input rules.

The generated dataset: annotation JSONs in `<root>/labels/`, images in `<root>/pictures/` under
sub-folders named in `file_name`, 7 classes with ids 3, 9, 10, 11, 40, 41, 1000, a Roboflow-style
parent category (id 0, never annotated, every other category's supercategory), PNG and JPEG
files, extra fields (segmentation, keypoints, attributes, track ids) and annotations without
"area" or "iscrowd".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from atss_cli.data.cache import load_ann
from atss_cli.data.coco import parse_coco
from atss_cli.errors import AtssError
from cli_run import assert_one_line_error, atss

ROOT = Path(__file__).resolve().parents[1]
CLASS_IDS = [3, 9, 10, 11, 40, 41, 1000]
CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse", "sheep", "cow"]
SIZE = (96, 64)  # w, h of every image


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _boxes_for(index: int) -> list[tuple[int, list[float]]]:
    """(class position, xywh) of image `index`: two objects, every class used in a split of 7+."""
    w, h = SIZE
    a = (index % 7, [4.0 + index % 5, 6.0, 30.0, 24.0])          # 720 px^2: a small object
    b = ((index + 3) % 7, [44.0, 10.0 + index % 3, 48.0, 50.0])   # 2400 px^2: a medium one
    assert a[1][0] + a[1][2] <= w and b[1][1] + b[1][3] <= h
    return [a, b]


def make_dataset(root: Path, n_train: int = 8, n_val: int = 7) -> dict:
    """The dataset described at the top; returns {"train": (ann, images), "val": (ann, images)}."""
    from PIL import Image, ImageDraw

    (root / "labels").mkdir(parents=True)
    cats = [{"id": 0, "name": "animals", "supercategory": "none"}]
    cats += [{"id": i, "name": n, "supercategory": "animals"} for i, n in zip(CLASS_IDS, CLASS_NAMES)]
    cats.reverse()  # out of order on purpose
    out = {}
    ann_id = 1
    for split, n, base in (("train", n_train, 0), ("val", n_val, 500)):
        images, anns = [], []
        for i in range(n):
            image_id = base + 7 * i + 2  # not contiguous, not from 1
            sub = f"{split}/batch{i % 2}"
            suffix = ".jpg" if i % 3 == 2 else ".png"
            name = f"{sub}/img_{i:03d}{suffix}"
            path = root / "pictures" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", SIZE, (40, 40, 40))
            draw = ImageDraw.Draw(img)
            for k, (x, y, bw, bh) in _boxes_for(i):
                shade = 90 + 20 * k  # grey: the drawn outlines are the only class colours in a picture
                draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=(shade, shade, shade))
                extra: dict = {"segmentation": [[x, y, x + bw, y, x + bw, y + bh]],
                               "keypoints": [1, 2, 2], "num_keypoints": 1,
                               "attributes": {"occluded": False, "track_id": i}}
                if (ann_id % 2) == 0:
                    extra["area"] = bw * bh
                if (ann_id % 3) == 0:
                    extra["iscrowd"] = 0
                anns.append({"id": ann_id, "image_id": image_id, "category_id": CLASS_IDS[k],
                             "bbox": [x, y, bw, bh], **extra})
                ann_id += 1
            img.save(path, quality=95) if suffix == ".jpg" else img.save(path)
            images.append({"id": image_id, "file_name": name, "width": SIZE[0], "height": SIZE[1],
                           "license": 1, "date_captured": "2026-01-01"})
        ann = root / "labels" / f"{split}_export.json"
        ann.write_text(json.dumps({"info": {"description": "generated"}, "images": images, "annotations": anns,
                                   "categories": cats}))
        out[split] = (ann, root / "pictures")
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom") / "data"
    return root, make_dataset(root)


# --------------------------------------------------------------------------- the data layer


def test_categories_names_and_defaults(dataset, tmp_path):
    root, files = dataset
    cache = load_ann(*files["train"], cache_dir=tmp_path / "c")
    assert cache.label_to_cat_id.tolist() == CLASS_IDS
    assert [c["name"] for c in cache.categories] == CLASS_NAMES and cache.num_classes == 7
    assert cache.stats["dropped_categories"] == [{"id": 0, "name": "animals"}]
    assert cache.stats["usable_boxes"] == 16 and cache.stats["crowd_boxes"] == 0   # missing iscrowd is 0
    assert sum(cache.stats["skipped"].values()) == 0
    assert cache.file_name(1) == "train/batch1/img_001.png" and cache.image_path(1).is_file()
    (k_a, (x, y, w, h)), (k_b, _) = _boxes_for(1)
    np.testing.assert_array_equal(cache.boxes(1)[0], [x, y, x + w, y + h])
    assert cache.labels(1).tolist() == [k_a, k_b]
    assert len(cache.train_indices()) == 8


def _doc(anns, cats=None, images=None):
    return {"images": images or [{"id": 1, "file_name": "a.png", "width": 50, "height": 40},
                                 {"id": 2, "file_name": "b.png", "width": 50, "height": 40}],
            "annotations": anns, "categories": cats or [{"id": 0, "name": "zero"}, {"id": 7, "name": "seven"}]}


def _ann(i, bbox, image_id=1, cat=7, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def test_duplicate_annotation_ids_are_skipped_after_the_first(tmp_path):
    p = parse_coco(tmp_path / "a.json", _doc([_ann(1, [1, 1, 10, 10]), _ann(1, [2, 2, 10, 10], image_id=2),
                                              _ann(2, [3, 3, 10, 10])]))
    assert p.stats["skipped"]["duplicate_id"] == 1 and p.stats["usable_boxes"] == 2
    assert p.ann_ids.tolist() == [1, 2]


def test_non_finite_and_negative_boxes_are_skipped_with_their_reason(tmp_path):
    p = parse_coco(tmp_path / "a.json", _doc([
        _ann(1, [float("nan"), 1, 10, 10]), _ann(2, [1, 1, float("inf"), 10]), _ann(3, [1, 1, 10, 10], area=float("inf")),
        _ann(4, [20, 20, -5, 10]), _ann(5, [20, 20, 5, -10]), _ann(6, [1, 1, 10, 10])]))
    s = p.stats["skipped"]
    assert (s["non_finite"], s["negative_size"], s["no_overlap"], s["degenerate"]) == (3, 2, 0, 0)
    assert p.stats["usable_boxes"] == 1


def test_category_id_zero_kept_and_negative_is_an_error(tmp_path):
    p = parse_coco(tmp_path / "a.json", _doc([_ann(1, [1, 1, 10, 10], cat=0), _ann(2, [1, 1, 10, 10], cat=5)]))
    assert [c["id"] for c in p.categories] == [0, 7] and p.labels.tolist() == [0]
    assert p.stats["skipped"]["unknown_category"] == 1 and p.stats["skipped"]["unknown_image"] == 0
    with pytest.raises(AtssError, match=r'"categories"\[1\]\["id"\] must be an integer >= 0, got -3'):
        parse_coco(tmp_path / "a.json", _doc([], cats=[{"id": 1, "name": "a"}, {"id": -3, "name": "b"}]))


def test_duplicate_image_ids_are_an_error(tmp_path):
    images = [{"id": 4, "file_name": "a.png", "width": 5, "height": 5},
              {"id": 4, "file_name": "b.png", "width": 5, "height": 5}]
    with pytest.raises(AtssError, match='"images" repeats id 4'):
        parse_coco(tmp_path / "a.json", _doc([], images=images))


def test_only_an_unannotated_parent_category_is_dropped(tmp_path):
    cats = [{"id": 1, "name": "vehicle", "supercategory": "none"},
            {"id": 2, "name": "car", "supercategory": "vehicle"},
            {"id": 3, "name": "person", "supercategory": "person"},     # COCO style: its own supercategory
            {"id": 4, "name": "bike", "supercategory": "vehicle"}]
    p = parse_coco(tmp_path / "a.json", _doc([_ann(1, [1, 1, 9, 9], cat=2)], cats=cats))
    assert [c["name"] for c in p.categories] == ["car", "person", "bike"]
    assert p.stats["dropped_categories"] == [{"id": 1, "name": "vehicle"}]
    # Annotated, the parent is a class of its own.
    p = parse_coco(tmp_path / "a.json", _doc([_ann(1, [1, 1, 9, 9], cat=1)], cats=cats))
    assert len(p.categories) == 4 and p.stats["dropped_categories"] == []


# --------------------------------------------------------------------------- atss prepare


def test_prepare_files_layout_with_out_writes_nothing_into_the_dataset(dataset, tmp_path):
    root, files = dataset
    before = snapshot(root)
    out, report = tmp_path / "out", tmp_path / "report.json"
    (train_ann, images), (val_ann, _) = files["train"], files["val"]
    proc = atss("prepare", "--train-ann", train_ann, "--train-images", images, "--val-ann", val_ann,
                "--val-images", images, "--out", out, "--check-images", "--draw", 3, "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(root) == before
    assert "dropped categories" in proc.stdout and "animals (id 0)" in proc.stdout
    data = json.loads(report.read_text())
    train, val = data["splits"]
    assert (train["split"], val["split"]) == ("train", "val")
    assert train["categories"] == 7 and list(train["boxes_per_category"]) == CLASS_NAMES
    assert train["dropped_categories"] == [{"id": 0, "name": "animals"}]
    assert (train["images"], train["usable_boxes"], train["missing_files"]) == (8, 16, 0)
    assert (val["images"], val["usable_boxes"], val["training_images"]) == (7, 14, 7)
    assert train["check_images"]["undecodable"] == 0 and train["check_images"]["size_mismatch"] == 0
    for r in (train, val):
        assert Path(r["cache"]["path"]).parent == out and r["cache"]["status"] == "built"
        listed = Path(r["image_list"]["path"])
        assert listed.parent == out and listed.read_text().split()[0].startswith(r["split"] + "/batch0/")
    drawn = data["drawn"]
    assert drawn["split"] == "train" and len(drawn["files"]) == 3 and drawn["unreadable"] == []
    # Each picture is its image with the boxes drawn in the class colours.
    from atss_cli.data.cache import load_ann as load
    from atss_cli.data.transforms import read_image
    from atss_cli.drawing import class_color

    cache = load(train_ann, images, cache_dir=out)
    for f in drawn["files"]:
        assert Path(f).parent == out / "drawn" / "train" and f.endswith(".png")
        i = int(Path(f).name.split("_")[0])
        pic = read_image(Path(f))[:, :, ::-1]   # RGB
        assert pic.shape[:2] == (SIZE[1], SIZE[0])
        box, label = cache.boxes(i)[1], int(cache.labels(i)[1])
        x1 = int(box[0])
        # The outline's bottom-left corner: the caption sits at the top, the fill is another shade.
        assert tuple(pic[int(box[3]) - 1, x1]) == class_color(label)
    # Again: nothing rebuilt, nothing written into the dataset.
    proc = atss("prepare", "--train-ann", train_ann, "--train-images", images, "--out", out)
    assert proc.returncode == 0 and "(up to date)" in proc.stdout and snapshot(root) == before


def test_prepare_files_without_out_keeps_the_list_beside_the_cache(tmp_path):
    files = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    ann, images = files["val"]
    report = tmp_path / "r.json"
    proc = atss("prepare", "--val-ann", ann, "--val-images", images, "--json", report)
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(report.read_text())["splits"]
    assert Path(r["cache"]["path"]).parent == ann.parent / ".atss_cache"
    assert Path(r["image_list"]["path"]).parent == ann.parent / ".atss_cache"
    # The user's own files are untouched: only the cache folder is new.
    assert sorted(p.name for p in ann.parent.iterdir()) == [".atss_cache", "train_export.json", "val_export.json"]


@pytest.mark.parametrize("case", ["ann without images", "images without ann", "missing ann", "missing folder",
                                  "synthetic with folders", "splits with files", "coco and files"])
def test_prepare_files_errors_are_one_line(dataset, tmp_path, case):
    root, files = dataset
    ann, images = files["val"]
    args, needles = {
        "ann without images": (["--val-ann", ann], ("--val-ann needs --val-images",)),
        "images without ann": (["--train-images", images], ("--train-images needs --train-ann",)),
        "missing ann": (["--val-ann", tmp_path / "no.json", "--val-images", images], ("annotation file not found",)),
        "missing folder": (["--val-ann", ann, "--val-images", tmp_path / "nope"], ("image folder not found", "nope")),
        "synthetic with folders": (["--synthetic", tmp_path / "s", "--train-images", "12"], ("--num-train",)),
        "splits with files": (["--val-ann", ann, "--val-images", images, "--splits", "a"], ("--splits",)),
        "coco and files": (["--coco", root, "--val-ann", ann, "--val-images", images], ("exactly one",)),
    }[case]
    assert_one_line_error(atss("prepare", *args, "--out", tmp_path / "o"), *needles)


def test_demo_takes_the_new_count_flags():
    proc = atss("demo", "--help")
    assert proc.returncode == 0 and "--num-train" in proc.stdout and "--num-val" in proc.stdout
    assert "--train-images" not in proc.stdout
    assert_one_line_error(atss("demo", "--num-train", "2"), "--num-train")


# --------------------------------------------------------------------------- atss eval


def _gt_results(ann: Path) -> list[dict]:
    doc = json.loads(ann.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in doc["annotations"]]


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_eval_files_without_area_scores_ground_truth_ap_1_in_every_size_range(dataset, tmp_path, evaluator):
    """A missing "area" is w x h in COCOeval's small / medium / large ranges too."""
    pytest.importorskip(evaluator.replace("-", "_"))
    _, files = dataset
    ann, images = files["val"]
    dets, metrics_file = tmp_path / "gt.json", tmp_path / "m.json"
    dets.write_text(json.dumps(_gt_results(ann)))
    proc = atss("eval", "--ann", ann, "--images", images, "--detections", dets, "--evaluator", evaluator,
                "--per-class", "--json", metrics_file, "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(metrics_file.read_text())
    assert m["mAP"] == pytest.approx(1.0) and m["mAP_s"] == pytest.approx(1.0) and m["mAP_m"] == pytest.approx(1.0)
    assert m["mAP_l"] == -1.0                                  # no box above 96^2 px
    assert list(m["per_class"]) == CLASS_NAMES                 # in id order, by the JSON's names
    for name in CLASS_NAMES:
        assert name in proc.stdout
    assert "animals" not in proc.stdout
    # Off by the area: a file whose small boxes claim to be large is measured by its own areas.
    doc = json.loads(ann.read_text())
    for a in doc["annotations"]:
        a["area"] = 100.0 ** 2
    big = tmp_path / "big.json"
    big.write_text(json.dumps(doc))
    proc = atss("eval", "--ann", big, "--images", images, "--detections", dets, "--evaluator", evaluator,
                "--json", metrics_file, "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(metrics_file.read_text())
    assert m["mAP_l"] == pytest.approx(1.0) and m["mAP_s"] == -1.0


def test_eval_ground_truth_leaves_out_duplicates_and_fills_ids(tmp_path):
    from atss_cli.evaluation.cocoeval import coco_evaluate
    from atss_cli.evaluation.ground_truth import eval_ground_truth

    pytest.importorskip("pycocotools")
    root = tmp_path / "d"
    (root / "im").mkdir(parents=True)
    doc = _doc([{"image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10]},           # no id, area, iscrowd
                _ann(5, [20, 5, 20, 20], image_id=2), _ann(5, [0, 0, 30, 30], image_id=2),   # a repeated id
                _ann(6, [1, 1, float("nan"), 3], image_id=2)])
    ann = root / "a.json"
    ann.write_text(json.dumps(doc))
    cache = load_ann(ann, root / "im", cache_dir=tmp_path / "c")
    gt = eval_ground_truth(cache)
    assert [(a["id"], a["area"], a["iscrowd"]) for a in gt["annotations"]] == [(7, 100.0, 0), (5, 400.0, 0)]
    dets = [{"image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "score": 0.9},
            {"image_id": 2, "category_id": 7, "bbox": [20, 5, 20, 20], "score": 0.8}]
    assert coco_evaluate(gt, dets, evaluator="pycocotools")["mAP"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random 7-class model (ResNet-18, small FPN and head) whose classifier bias is 0: boxes come out."""
    import torch

    from atss_cli.model import build_atss

    config = {"depth": 18, "fpn_channels": 32, "head_channels": 64, "stacked_convs": 1, "scale": [128, 128]}
    torch.manual_seed(0)
    model = build_atss(num_classes=7, **{k: v for k, v in config.items() if k != "scale"})
    state = model.state_dict()
    state["bbox_head.atss_cls.bias"].zero_()
    path = tmp_path_factory.mktemp("ckpt") / "tiny7.pth"
    torch.save({"state_dict": state, "config": config}, path)
    return path


def test_eval_checkpoint_on_files_names_the_classes(dataset, tiny_checkpoint, tmp_path):
    pytest.importorskip("pycocotools")
    root, files = dataset
    ann, images = files["val"]
    before = snapshot(root)
    results, metrics_file = tmp_path / "dets.json", tmp_path / "m.json"
    proc = atss("eval", "--ann", ann, "--images", images, "--checkpoint", tiny_checkpoint, "--device", "cpu",
                "--workers", 0, "--per-class", "--evaluator", "pycocotools", "--results", results,
                "--json", metrics_file, "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert "on val_export" in proc.stdout
    m = json.loads(metrics_file.read_text())
    assert m["num_images"] == 7 and m["split"] is None and m["ann_file"] == str(ann)
    assert set(m["per_class"]) == set(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert name in proc.stdout
    dets = json.loads(results.read_text())
    assert dets and {d["category_id"] for d in dets} <= set(CLASS_IDS)
    assert snapshot(root) == before


@pytest.mark.parametrize("args, needle", [
    (["--ann", "{ann}"], "--ann needs --images"),
    (["--images", "{images}"], "--images needs --ann"),
    (["--ann", "{ann}", "--images", "{images}", "--split", "val2017"], "--split is for --coco"),
    (["--ann", "{ann}", "--images", "{images}", "--coco", "{root}"], "not both"),
    (["--ann", "{root}/none.json", "--images", "{images}"], "annotation file not found"),
])
def test_eval_files_errors_are_one_line(dataset, tiny_checkpoint, args, needle):
    root, files = dataset
    ann, images = files["val"]
    args = [a.format(ann=ann, images=images, root=root) for a in args]
    assert_one_line_error(atss("eval", *args, "--checkpoint", tiny_checkpoint, "--device", "cpu"), needle)


def test_thousands_of_classes_with_gaps(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(20000, size=3000, replace=False))
    cats = [{"id": int(i), "name": f"c{int(i)}", "supercategory": "thing"} for i in ids[::-1]]
    anns = [_ann(k + 1, [1, 1, 10, 10], image_id=1 + k % 2, cat=int(ids[(k * 7) % 3000])) for k in range(500)]
    p = parse_coco(tmp_path / "a.json", _doc(anns, cats=cats))
    assert [c["id"] for c in p.categories] == ids.tolist()
    assert sorted(ids[p.labels].tolist()) == sorted(a["category_id"] for a in anns)
