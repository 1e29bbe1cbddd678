"""Folders in the layouts that export tools write (Roboflow, CVAT, Label Studio): `atss prepare
--coco DIR` on one names the tool and the exact flags, and those flags then read the folder."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from atss_cli.data.layouts import recognise
from cli_run import assert_one_line_error, atss


def _split(folder: Path, ann: Path, prefix: str = "", n: int = 3) -> None:
    """n JPEGs of 64x48 in `folder`, described by `ann` with file_name `prefix` + name."""
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        name = f"img_{i}.jpg"
        picture = np.full((48, 64, 3), 40 * i, np.uint8)
        picture[10:30, 8:40] = (0, 200, 0)
        cv2.imwrite(str(folder / name), picture)
        images.append({"id": i + 1, "file_name": prefix + name, "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 10, 32, 20],
                     "area": 640, "iscrowd": 0})
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 0, "name": "things", "supercategory": "none"},
                                              {"id": 1, "name": "leaf", "supercategory": "things"}]}))


def _roboflow(root: Path) -> None:
    for split in ("train", "valid", "test"):
        _split(root / split, root / split / "_annotations.coco.json")


def _cvat(root: Path) -> None:
    _split(root / "images" / "Train", root / "annotations" / "instances_Train.json")
    _split(root / "images" / "Validation", root / "annotations" / "instances_Validation.json")


def _label_studio(root: Path) -> None:
    _split(root / "images", root / "result.json", prefix="images/")


def _flags_from(error: str) -> list[str]:
    """The prepare flags the error suggests (up to the eval hint in parentheses)."""
    suggestion = error.split("read it with ", 1)[1].split(" (atss eval:")[0]
    return shlex.split(suggestion)


@pytest.mark.parametrize("make, tool, train, val", [
    (_roboflow, "Roboflow COCO", "train/_annotations.coco.json", "valid/_annotations.coco.json"),
    (_cvat, "CVAT COCO 1.0", "annotations/instances_Train.json", "annotations/instances_Validation.json"),
    (_label_studio, "Label Studio COCO", "result.json", None),
])
def test_an_export_folder_is_recognised_and_the_suggested_flags_read_it(tmp_path, make, tool, train, val):
    root = tmp_path / "export"
    make(root)
    layout = recognise(root)
    assert layout is not None and layout.tool == tool
    assert layout.splits[layout.train][0] == root / train
    assert (layout.splits[layout.val][0] if layout.val else None) == (root / val if val else None)

    error = assert_one_line_error(atss("prepare", "--coco", root), f"looks like a {tool} export", code=2)
    flags = _flags_from(error)
    out = tmp_path / "prepared"
    proc = atss("prepare", *flags, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"│ images\s+│ 3 │", proc.stdout), proc.stdout
    assert "dropped categories (no annotation, only another's supercategory): things (id 0)" in proc.stdout
    if val:
        assert "(atss eval: --ann" in error and "--val-ann" in flags


def test_the_coco_layout_and_plain_folders_get_no_hint(tmp_path):
    assert recognise(tmp_path) is None
    (tmp_path / "annotations").mkdir()
    assert recognise(tmp_path) is None          # annotations/ alone is not a CVAT export
    error = assert_one_line_error(atss("prepare", "--coco", tmp_path), "no split of train2017, val2017", code=2)
    assert "looks like" not in error
