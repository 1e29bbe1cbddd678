"""The generated dataset: deterministic, real COCO, exercising the parsing rules."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import pytest

from atss_cli.data import generate_synthetic, prepare_split
from atss_cli.errors import AtssError


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a = generate_synthetic(tmp_path / "a", train_images=8, val_images=3, seed=7, size=96)
    generate_synthetic(tmp_path / "b", train_images=8, val_images=3, seed=7, size=96)
    generate_synthetic(tmp_path / "c", train_images=8, val_images=3, seed=8, size=96)
    assert a["status"] == "written"
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    again = generate_synthetic(tmp_path / "a", train_images=8, val_images=3, seed=7, size=96)
    assert again["status"] == "exists"
    with pytest.raises(AtssError, match="other parameters"):
        generate_synthetic(tmp_path / "a", train_images=9, val_images=3, seed=7, size=96)


def test_val_set_does_not_depend_on_train_count(tmp_path):
    generate_synthetic(tmp_path / "a", train_images=2, val_images=3, seed=0, size=96)
    generate_synthetic(tmp_path / "b", train_images=5, val_images=3, seed=0, size=96)
    assert digest(tmp_path / "a" / "val2017") == digest(tmp_path / "b" / "val2017")


def test_pycocotools_reads_it_and_the_rules_are_exercised(tmp_path):
    from pycocotools.coco import COCO

    root = tmp_path / "syn"
    generate_synthetic(root, train_images=100, val_images=26, seed=0, size=96)
    for split in ("train2017", "val2017"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == (100 if split == "train2017" else 26)
        assert sorted(coco.getCatIds()) == [1, 2, 3, 5]
        doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        for im in doc["images"]:
            from PIL import Image

            with Image.open(root / split / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"])
    r = prepare_split(root, "train2017")
    assert r["crowd_boxes"] >= 3 and r["missing_files"] == 0
    assert all(n >= 2 for n in r["skipped"].values() if n) and r["skipped"]["unknown_image"] == 0
    assert {k for k, n in r["skipped"].items() if n} == {"ignore", "no_overlap", "degenerate", "unknown_category"}
    assert r["not_for_training"] == {"no_annotation": 1, "too_small": 1}
    assert r["images_without_usable_box"] == 2          # no objects; only a crowd
    v = prepare_split(root, "val2017")
    assert v["skipped"] == {"unknown_image": 0, "duplicate_id": 0, "ignore": 0, "non_finite": 0, "negative_size": 0,
                            "no_overlap": 0, "degenerate": 0, "unknown_category": 1}
    assert v["crowd_boxes"] >= 1 and min(v["boxes_per_category"].values()) > 0
