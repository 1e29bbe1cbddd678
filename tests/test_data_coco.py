"""COCO parsing rules, the summary numbers, the cache (round trip, staleness, no-op, read-only)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from atss_cli.data import load_split, prepare_split
from atss_cli.data.cache import CocoCache
from atss_cli.errors import AtssError

# Categories deliberately out of order and with gaps: labels follow sorted ids 1, 3, 7 -> 0, 1, 2.
CATEGORIES = [{"id": 3, "name": "three"}, {"id": 1, "name": "one"}, {"id": 7, "name": "seven"}]
IMAGES = [  # id, file, (w, h), how the file is written
    (1, "a.png", (100, 80), "ok"),
    (2, "b.png", (60, 50), "ok"),        # only a crowd box: trains with zero GT
    (3, "c.png", (40, 20), "ok"),        # min side 20 < 32: not for training
    (4, "d.png", (64, 64), "ok"),        # no annotation: not for training
    (5, "e.png", (64, 48), "missing"),   # only an unknown category: not for training; file missing
    (6, "f.png", (50, 70), "ok"),        # portrait
    (7, "g.jpg", (40, 40), "garbage"),   # undecodable
    (8, "h.png", (48, 40), "wrong size"),
]
ANNOTATIONS = [  # id, image, category, bbox, extra; the comment is the expected verdict
    (1, 1, 1, [10, 10, 30, 20], {}),                       # usable
    (2, 1, 3, [50, 40, 20, 20], {"iscrowd": 1}),           # usable, crowd
    (3, 1, 1, [0, 0, 10, 10], {"ignore": 1}),              # ignore
    (4, 1, 1, [5, 5, 0.5, 10], {"area": 5}),               # degenerate (w < 1)
    (5, 1, 1, [5, 5, 10, 10], {"area": 0}),                # degenerate (area 0)
    (6, 1, 99, [5, 5, 10, 10], {}),                        # unknown category
    (7, 1, 1, [120, 10, 10, 10], {}),                      # no overlap (right of the image)
    (8, 2, 7, [1, 1, 20, 20], {"iscrowd": 1}),             # usable, crowd
    (9, 3, 1, [2, 2, 10, 10], {}),                         # usable (image too small for training)
    (10, 5, 99, [1, 1, 5, 5], {}),                         # unknown category
    (11, 6, 3, [5, 5, 20, 30], {}),                        # usable
    (12, 6, 1, [10, 20, 30, 40], {}),                      # usable
    (13, 999, 1, [1, 1, 5, 5], {}),                        # unknown image
    (14, 7, 7, [1, 1, 10, 10], {}),                        # usable
    (15, 8, 1, [1, 1, 10, 10], {}),                        # usable
    (16, 1, 1, [-5, 70, 20, 20], {}),                      # usable, partly outside (kept unclipped)
]


def make_coco(root: Path, split: str = "val2017") -> Path:
    """A small COCO folder with every kind of defect; returns the root."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    for _, name, (w, h), how in IMAGES:
        path = root / split / name
        if how == "ok":
            Image.new("RGB", (w, h), (120, 60, 30)).save(path)
        elif how == "garbage":
            path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        elif how == "wrong size":
            Image.new("RGB", (w + 2, h), (0, 0, 0)).save(path)
    doc = {"images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, (w, h), _ in IMAGES],
           "annotations": [{"id": a, "image_id": im, "category_id": c, "bbox": b, "iscrowd": 0,
                            "area": b[2] * b[3], **extra} for a, im, c, b, extra in ANNOTATIONS],
           "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, indent=1))
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def coco(tmp_path):
    return make_coco(tmp_path / "coco")


def test_summary_numbers(coco):
    r = prepare_split(coco, "val2017", check_images=True)
    assert r["images"] == 8 and r["annotations"] == 16 and r["categories"] == 3
    assert r["usable_boxes"] == 7 and r["crowd_boxes"] == 2
    assert r["skipped"] == {"unknown_image": 1, "duplicate_id": 0, "ignore": 1, "non_finite": 0, "negative_size": 0,
                            "no_overlap": 1, "degenerate": 2, "unknown_category": 2}
    assert r["dropped_categories"] == []
    assert r["images_without_usable_box"] == 3                       # b (crowd only), d, e
    assert r["training_images"] == 5
    assert r["not_for_training"] == {"no_annotation": 2, "too_small": 1}
    assert r["boxes_per_category"] == {"one": 5, "three": 1, "seven": 1}
    assert r["missing_files"] == 1 and r["missing_examples"] == ["e.png"]
    c = r["check_images"]
    assert (c["checked"], c["undecodable"], c["size_mismatch"]) == (7, 1, 1)
    assert c["undecodable_examples"] == ["g.jpg"] and c["size_mismatch_examples"][0].startswith("h.png (50x40")
    assert r["cache"]["status"] == "built"
    assert r["image_list"]["status"] == "written"
    assert (coco / "val2017.txt").read_text().split() == [n for _, n, _, _ in IMAGES]


def test_cache_round_trip(coco):
    cache = load_split(coco, "val2017")
    assert cache.num_images == 8 and cache.num_classes == 3
    assert cache.image_ids.tolist() == list(range(1, 9)) and cache.image_ids.dtype == np.int64
    assert list(cache.file_names) == [n for _, n, _, _ in IMAGES] and cache.file_name(5) == "f.png"
    assert cache.widths.tolist() == [w for _, _, (w, _), _ in IMAGES]
    assert cache.heights.tolist() == [h for _, _, (_, h), _ in IMAGES]
    assert cache.categories == [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    assert cache.label_to_cat_id.tolist() == [1, 3, 7] and cache.cat_id_to_label == {1: 0, 3: 1, 7: 2}
    np.testing.assert_array_equal(cache.boxes(0), [[10, 10, 40, 30], [-5, 70, 15, 90]])
    assert cache.boxes(0).dtype == np.float32 and cache.labels(0).dtype == np.int64
    assert cache.labels(0).tolist() == [0, 0]
    np.testing.assert_array_equal(cache.crowd_boxes(0), [[50, 40, 70, 60]])
    assert cache.boxes(1).shape == (0, 4) and cache.labels(1).shape == (0,)
    np.testing.assert_array_equal(cache.boxes(5), [[5, 5, 25, 35], [10, 20, 40, 60]])
    assert cache.labels(5).tolist() == [1, 0]
    assert cache.train_indices().tolist() == [0, 1, 5, 6, 7]
    assert cache.landscape().tolist() == [True, True, True, True, True, False, True, True]
    assert cache.image_dir == coco / "val2017" and cache.ann_file == coco / "annotations" / "instances_val2017.json"
    # Memory-mapped, and pickled as paths only.
    assert isinstance(cache._boxes, np.memmap)
    blob = pickle.dumps(cache)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.boxes(5), cache.boxes(5))


def test_second_run_is_a_noop(coco):
    prepare_split(coco, "val2017")
    before = snapshot(coco)
    r = prepare_split(coco, "val2017")
    assert r["cache"]["status"] == "up to date" and r["image_list"]["status"] == "exists"
    assert snapshot(coco) == before


def test_cache_rebuilt_when_annotations_change(coco):
    ann = coco / "annotations" / "instances_val2017.json"
    assert load_split(coco, "val2017").boxes(3).shape == (0, 4)
    doc = json.loads(ann.read_text())
    doc["annotations"].append({"id": 100, "image_id": 4, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0})
    ann.write_text(json.dumps(doc))
    cache = load_split(coco, "val2017")
    np.testing.assert_array_equal(cache.boxes(3), [[1, 2, 4, 6]])
    assert cache.labels(3).tolist() == [2]
    # Touched but unchanged: the content hash says fresh, nothing is rebuilt.
    boxes_file = cache.cache_dir / "boxes.npy"
    built = boxes_file.stat().st_mtime_ns
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**9))
    assert load_split(coco, "val2017").boxes(3).shape == (1, 4)
    assert boxes_file.stat().st_mtime_ns == built


def test_existing_image_list_is_never_overwritten(coco, tmp_path):
    (coco / "val2017.txt").write_text("something else\n")
    out = tmp_path / "out"
    r = prepare_split(coco, "val2017", out_dir=out)
    assert r["image_list"]["status"] == "differs" and "differs" in r["image_list"]["note"]
    assert (coco / "val2017.txt").read_text() == "something else\n"
    assert (out / "val2017.txt").read_text().split()[0] == "a.png"


def test_read_only_dataset_needs_out(coco, tmp_path, monkeypatch):
    """A dataset folder nobody may write: no --out is an error; with --out nothing in it changes."""
    import atss_cli.data.cache as cache_mod
    import atss_cli.data.prepare as prepare_mod

    ro = str(coco)
    real_writable, real_access = cache_mod._writable, os.access
    monkeypatch.setattr(cache_mod, "_writable", lambda p: not str(p).startswith(ro) and real_writable(p))
    monkeypatch.setattr(prepare_mod.os, "access", lambda p, m: not str(p).startswith(ro) and real_access(p, m))
    before = snapshot(coco)
    with pytest.raises(AtssError, match="read-only.*--out"):
        prepare_split(coco, "val2017")
    out = tmp_path / "cache"
    r = prepare_split(coco, "val2017", out_dir=out)
    assert r["image_list"] == {"path": str(out / "val2017.txt"), "status": "written"}
    assert (out / "val2017" / "meta.json").exists()
    assert snapshot(coco) == before
    assert load_split(coco, "val2017", out).num_images == 8


def test_out_writes_nothing_into_a_writable_dataset(coco, tmp_path):
    """With out_dir the dataset folder is left exactly as it was, image list included."""
    before = snapshot(coco)
    out = tmp_path / "out"
    for _ in range(2):
        r = prepare_split(coco, "val2017", out_dir=out)
        assert snapshot(coco) == before
    assert r["image_list"] == {"path": str(out / "val2017.txt"), "status": "exists"}
    assert (out / "val2017.txt").read_text().split() == [n for _, n, _, _ in IMAGES]
    # A user's own list is still compared and reported, and left alone.
    (coco / "val2017.txt").write_text("mine.png\n")
    before = snapshot(coco)
    r = prepare_split(coco, "val2017", out_dir=out)
    assert r["image_list"]["status"] == "differs" and snapshot(coco) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_dataset_with_permissions(coco, tmp_path):
    for p in [coco, *coco.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with pytest.raises(AtssError, match="read-only"):
            prepare_split(coco, "val2017")
        assert prepare_split(coco, "val2017", out_dir=tmp_path / "c")["images"] == 8
    finally:
        for p in [coco, *coco.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_api_errors(coco, tmp_path):
    with pytest.raises(AtssError, match="split 'train2017' not found"):
        load_split(coco, "train2017")
    with pytest.raises(AtssError, match="COCO folder not found"):
        load_split(tmp_path / "nope", "val2017")
    (coco / "annotations" / "instances_val2017.json").write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(AtssError, match="empty split"):
        load_split(coco, "val2017")


@pytest.mark.parametrize("doc, match", [
    ([], "top level is a list"),
    ({"annotations": [], "categories": []}, 'no "images" field'),
    ({"images": {}, "annotations": [], "categories": []}, '"images" is a dict'),
    ({"images": [{"id": 1, "file_name": "a", "width": 4}], "annotations": [], "categories": [{"id": 1, "name": "x"}]},
     r'"images"\[0\] has no "height" field'),
    ({"images": [{"id": 1, "file_name": "a", "width": 4, "height": 4}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
      "categories": [{"id": 1, "name": "x"}]}, r'"annotations"\[0\]\["bbox"\] must be a list of 4 numbers'),
    ({"images": [{"id": 1, "file_name": "a", "width": 4, "height": 4}], "annotations": [],
      "categories": [{"id": "1", "name": "x"}]}, r'"categories"\[0\]\["id"\] must be an integer'),
    ({"images": [{"id": 1, "file_name": "a", "width": 4, "height": 4}], "annotations": [], "categories": []},
     '"categories" is empty'),
])
def test_not_coco_names_the_field(coco, doc, match):
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    with pytest.raises(AtssError, match=match):
        load_split(coco, "val2017")


def test_cache_pickles_small_and_opens_fast(coco):
    cache = load_split(coco, "val2017")
    assert isinstance(pickle.loads(pickle.dumps(cache)), CocoCache)


def test_segmentation_skipping_changes_nothing(tmp_path):
    """The fast parse (segmentations cut out before json.loads) equals the plain one."""
    from atss_cli.data.coco import load_json, parse_coco

    doc = {"info": {"note": 'a string with "segmentation": [[1, 2]] inside'},
           "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0,
                "segmentation": [[1.5, 2, 11, 2, 11, 22], [3, 3, 4, 4, 5, 3]]},
               {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 1,
                "segmentation": {"counts": "X]1:`0[]?\\", "size": [40, 50]}},
               {"id": 3, "image_id": 1, "category_id": 1, "bbox": [6, 6, 10, 10], "area": 100, "iscrowd": 0,
                "segmentation": {"counts": [0, 5, 3], "size": [40, 50]}},
               {"id": 4, "image_id": 1, "category_id": 1, "bbox": [7, 7, 10, 10], "iscrowd": 0, "segmentation": []},
               {"image_id": 1, "category_id": 1, "bbox": [8, 8, 10, 10]}],            # optional fields absent
           "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "a.json"
    for indent in (None, 2):
        data = json.dumps(doc, indent=indent).encode()
        fast, slow = load_json(path, data), load_json(path, data, skip_segmentation=False)
        assert fast["info"] == slow["info"] and all(a.get("segmentation", 0) == 0 for a in fast["annotations"])
        a, b = parse_coco(path, fast), parse_coco(path, slow)
        for name in ("boxes", "labels", "crowd", "ann_ids", "box_offsets"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.stats == b.stats and a.stats["usable_boxes"] == 4 and a.crowd.tolist() == [False, True, False,
                                                                                           False, False]
        assert a.ann_ids.tolist() == [1, 2, 3, 4, -1]
