"""`atss prepare` through the real command line: each error path is one line, exit != 0, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli_run
from test_data_coco import make_coco


def atss(*args: str):
    """`atss prepare ARGS` (tests/cli_run.py's runner)."""
    return cli_run.atss("prepare", *args, timeout=120)


def assert_one_line_error(proc, *needles: str) -> str:
    """One `error: ...` line and nothing else on stderr, not even a warning."""
    return cli_run.assert_one_line_error(proc, *needles, warnings=False)


def test_prepare_ok_with_json(tmp_path):
    coco = make_coco(tmp_path / "coco")
    report = tmp_path / "report.json"
    proc = atss("--coco", str(coco), "--check-images", "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "train2017: not present" in proc.stdout and "val2017" in proc.stdout
    data = json.loads(report.read_text())
    assert data["absent"] == ["train2017"]
    (r,) = data["splits"]
    assert (r["split"], r["usable_boxes"], r["crowd_boxes"], r["missing_files"]) == ("val2017", 7, 2, 1)
    assert r["check_images"]["undecodable"] == 1


@pytest.mark.parametrize("case", ["missing folder", "explicit split missing", "no annotations", "no image folder",
                                  "malformed json", "not coco", "empty split", "no option", "both options"])
def test_error_paths(tmp_path, case):
    coco = make_coco(tmp_path / "coco")
    ann = coco / "annotations" / "instances_val2017.json"
    args = ["--coco", str(coco)]
    needles: tuple[str, ...] = ()
    if case == "missing folder":
        args, needles = ["--coco", str(tmp_path / "nope")], ("COCO folder not found", "nope")
    elif case == "explicit split missing":
        args, needles = args + ["--splits", "val2017,train2017"], ("train2017", "instances_train2017.json")
    elif case == "no annotations":
        ann.unlink()
        ann.parent.rmdir()
        needles = ("annotations",)
    elif case == "no image folder":
        for p in (coco / "val2017").iterdir():
            p.unlink()
        (coco / "val2017").rmdir()
        needles = ("image folder not found",)
    elif case == "malformed json":
        ann.write_text('{"images": [\n  {"id": 1,, "file_name": "a.png"}\n]}')
        needles = ("malformed JSON", "line 2", "column 12")
    elif case == "not coco":
        ann.write_text(json.dumps({"images": [{"id": 1, "width": 3, "height": 3}], "annotations": [],
                                   "categories": [{"id": 1, "name": "x"}]}))
        needles = ("not a COCO annotation file", '"images"[0] has no "file_name" field')
    elif case == "empty split":
        ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
        needles = ("empty split",)
    elif case == "no option":
        args, needles = [], ("--coco", "--synthetic")
    elif case == "both options":
        args, needles = args + ["--synthetic", str(tmp_path / "syn")], ("exactly one",)
    assert_one_line_error(atss(*args), *needles)


def test_synthetic_folder_not_empty(tmp_path):
    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "mine.txt").write_text("x")
    assert_one_line_error(atss("--synthetic", str(tmp_path / "syn")), "not empty")


def test_synthetic_then_prepare(tmp_path):
    syn = tmp_path / "syn"
    proc = atss("--synthetic", str(syn), "--num-train", "12", "--num-val", "4", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["split"] for r in data["splits"]] == ["train2017", "val2017"]
    assert (syn / ".atss_cache" / "train2017" / "meta.json").exists()
    # Again: same parameters, nothing written; `--coco` on it is the same dataset.
    proc = atss("--synthetic", str(syn), "--num-train", "12", "--num-val", "4")
    assert proc.returncode == 0 and "already there" in proc.stdout
    assert atss("--coco", str(syn)).returncode == 0
    assert_one_line_error(atss("--synthetic", str(syn), "--seed", "1"), "other parameters")


def test_out_leaves_the_dataset_folder_as_it_was_and_draw_goes_there(tmp_path):
    """--out: not one file of the COCO folder is added or changed (the image list went there before)."""
    from test_data_coco import snapshot

    coco = make_coco(tmp_path / "coco")
    before = snapshot(coco)
    out, report = tmp_path / "out", tmp_path / "r.json"
    proc = atss("--coco", str(coco), "--out", str(out), "--draw", "2", "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(coco) == before
    data = json.loads(report.read_text())
    assert data["splits"][0]["image_list"]["path"] == str(out / "val2017.txt")
    drawn = data["drawn"]
    assert drawn["folder"] == str(out / "drawn" / "val2017") and len(drawn["files"]) == 2
    assert all(Path(f).is_file() and f.endswith(".png") for f in drawn["files"])
    assert "drew 2 training images" in proc.stdout
