"""`atss predict` through the CLI: pictures with boxes drawn, a detections JSON, counted skips.

Plus the pieces it leans on without a model: class names (dataset, checkpoint, COCO's 80)
and what a checkpoint says about itself (our config; MMDetection's meta).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cli_run import assert_one_line_error, atss

from atss_cli.inference.checkpoint import parse_scale, read_checkpoint_info
from atss_cli.data.categories import class_names_for
from atss_cli.errors import AtssError


def test_predict_draws_pictures_and_writes_json(tiny, tmp_path):
    from atss_cli.data.transforms import decode_rgb

    coco, ckpt = tiny
    val = sorted((coco / "val2017").iterdir())
    png = tmp_path / "as_png.png"
    from PIL import Image

    Image.open(val[1]).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    proc = atss("predict", "--checkpoint", ckpt, val[0], png, broken, tmp_path / "missing.jpg", "--out", out,
                "--device", "cpu", "--score-thr", "0.2", "--coco", coco)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped ") for w in warnings), proc.stderr
    assert "2 skipped" in proc.stdout and "Traceback" not in proc.stderr

    summary = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in summary["images"]] == [str(val[0]), str(png)]
    assert [s["file"] for s in summary["skipped"]] == [str(broken), str(tmp_path / "missing.jpg")]
    names = [c["name"] for c in json.loads((coco / "annotations" / "instances_val2017.json").read_text())["categories"]]
    assert summary["class_names"] == names
    drawn = 0
    for record, suffix in zip(summary["images"], (".jpg", ".png")):
        picture = out / (record["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0] + suffix)
        assert record["output"] == str(picture) and picture.is_file()
        image = decode_rgb(picture)
        assert tuple(image.shape) == (3, record["height"], record["width"])
        scores = [d["score"] for d in record["detections"]]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.2 for s in scores)
        for d in record["detections"]:
            assert d["name"] == names[d["label"]]
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
        drawn += len(record["detections"])
    assert drawn > 0  # the zero-bias classifier scores about 0.25 after centerness


def test_predict_with_no_readable_image_fails(tiny, tmp_path):
    coco, ckpt = tiny
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    proc = atss("predict", "--checkpoint", ckpt, bad, "--out", tmp_path / "out", "--device", "cpu")
    assert_one_line_error(proc, "none of the 1 images")
    assert proc.stderr.startswith("warning: skipped ")


@pytest.mark.parametrize("args,needle", [
    (["--out", "OUT"], "images"),                          # no image given
    (["IMG"], "--out"),
    (["IMG", "--out", "OUT", "--score-thr", "1.5"], "--score-thr"),
    (["IMG", "--out", "OUT", "--scale", "1333"], "--scale"),
    (["IMG", "--out", "FILE"], "--out"),
    (["IMG", "--out", "OUT", "--coco", "NOPE"], "--coco"),
])
def test_predict_bad_flags_are_one_line_errors(tiny, tmp_path, args, needle):
    coco, ckpt = tiny
    img = sorted((coco / "val2017").iterdir())[0]
    (tmp_path / "file").write_text("x")
    subst = {"IMG": img, "OUT": tmp_path / "out", "FILE": tmp_path / "file", "NOPE": tmp_path / "nope"}
    proc = atss("predict", "--checkpoint", ckpt, *[subst.get(a, a) for a in args])
    assert_one_line_error(proc, needle)


def test_predict_missing_checkpoint_is_one_line_error(tmp_path):
    proc = atss("predict", "--checkpoint", tmp_path / "none.pth", tmp_path / "a.jpg", "--out", tmp_path / "o")
    assert_one_line_error(proc, "none.pth")


def test_class_names_come_from_dataset_checkpoint_or_coco(tiny, tmp_path):
    coco, _ = tiny
    cats = json.loads((coco / "annotations" / "instances_val2017.json").read_text())["categories"]
    copy = tmp_path / "coco"
    shutil.copytree(coco, copy)
    assert class_names_for(len(cats), coco_root=copy) == [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    with pytest.raises(AtssError, match="categories"):
        class_names_for(80, coco_root=copy)
    assert class_names_for(2, checkpoint_names=["a", "b"]) == ["a", "b"]
    coco80 = class_names_for(80)
    assert coco80[0] == "person" and coco80[-1] == "toothbrush"
    assert class_names_for(3) == ["class 0", "class 1", "class 2"]


def test_checkpoint_info_reads_our_config_and_mmdetection_meta(tmp_path):
    ours = tmp_path / "ours.pth"
    torch.save({"state_dict": {"bbox_head.atss_cls.weight": torch.zeros(4, 8, 3, 3)},
                "config": {"depth": 18, "fpn_channels": 96, "lr": 0.01, "scale": [320, 320],
                           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                                          {"id": 3, "name": "c"}, {"id": 5, "name": "d"}]}}, ours)
    info = read_checkpoint_info(ours)
    assert info.model == {"depth": 18, "fpn_channels": 96} and info.scale == (320, 320)
    assert info.num_classes == 4 and info.class_names == ["a", "b", "c", "d"]

    mmdet = tmp_path / "mmdet.pth"
    torch.save({"meta": {"CLASSES": tuple(f"c{i}" for i in range(80)), "epoch": 12},
                "state_dict": {"bbox_head.atss_cls.weight": torch.zeros(80, 8, 3, 3)}}, mmdet)
    info = read_checkpoint_info(mmdet)
    assert info.model == {} and info.scale is None  # R50 defaults, 1333x800
    assert info.num_classes == 80 and info.class_names[:2] == ["c0", "c1"]

    assert parse_scale("800,1333") == (1333, 800) and parse_scale("640x480") == (640, 480)
    assert parse_scale(None) is None
    with pytest.raises(AtssError):
        parse_scale("1333")


def test_ann_json_names_the_classes(tiny, tmp_path):
    """--ann FILE: any COCO-format JSON names the classes, in its id order (as training labels them)."""
    coco, ckpt = tiny
    cats = json.loads((coco / "annotations" / "instances_val2017.json").read_text())["categories"]
    renamed = [{"id": c["id"], "name": f"thing {c['id']}"} for c in reversed(cats)]
    ann = tmp_path / "custom.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 8, "height": 8}],
                               "annotations": [], "categories": renamed}))
    img = sorted((coco / "val2017").iterdir())[0]
    proc = atss("predict", "--checkpoint", ckpt, img, "--out", tmp_path / "out", "--device", "cpu",
                "--score-thr", "0.2", "--ann", ann)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "detections.json").read_text())
    expected = [f"thing {c['id']}" for c in sorted(cats, key=lambda c: c["id"])]
    assert summary["class_names"] == expected
    assert all(d["name"] == expected[d["label"]] for d in summary["images"][0]["detections"])
    assert class_names_for(len(cats), ann=ann) == expected
    proc = atss("predict", "--checkpoint", ckpt, img, "--out", tmp_path / "o2", "--ann", ann, "--coco", coco)
    assert_one_line_error(proc, "--ann")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    proc = atss("predict", "--checkpoint", ckpt, img, "--out", tmp_path / "o3", "--ann", broken)
    assert_one_line_error(proc, "broken.json")
