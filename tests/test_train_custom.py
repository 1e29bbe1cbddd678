"""`atss train` on any COCO-format dataset (issue 8, parts 1 and 3), through the CLI.

A generated dataset in a layout of its own (JSONs in labels/, images in sub-folders of pics/)
with category ids 3, 9 and 1000: training writes the categories into the checkpoint, eval shows
them by name, the same command resumes, `--load-from` a checkpoint with another class count says
in one line what it took, and bad flag combinations are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cli_run
from cli_run import TINY_MODEL, atss

CATEGORIES = [{"id": 1000, "name": "kettle"}, {"id": 3, "name": "lamp"}, {"id": 9, "name": "mug"}]
TINY = [*TINY_MODEL, "--device", "cpu"]  # from scratch where a test says so (--load-from is one test's source)


def assert_one_line_error(proc, needle):
    cli_run.assert_one_line_error(proc, needle, code=2)


def write_split(root: Path, split: str, n: int, categories=CATEGORIES) -> Path:
    """n 96x64 PNGs under pics/<split>/part<k>/, two boxes each, and labels/<split>.json."""
    from PIL import Image, ImageDraw

    images, anns = [], []
    for i in range(n):
        name = f"{split}/part{i % 2}/im{i}.png"
        path = root / "pics" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (96, 64), (30, 30, 30))
        draw = ImageDraw.Draw(img)
        for k, (x, y, w, h) in enumerate([(4 + i, 6, 30, 24), (44, 10, 48, 50)]):
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(120 + 60 * k,) * 3)
            anns.append({"id": 100 * i + k + 1, "image_id": 10 + i, "bbox": [x, y, w, h],
                         "category_id": categories[(i + k) % len(categories)]["id"]})
        img.save(path)
        images.append({"id": 10 + i, "file_name": name, "width": 96, "height": 64})
    ann = root / "labels" / f"{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories[::-1]}))
    return ann


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    train, val = write_split(root, "train", 4), write_split(root, "val", 3)
    return {"train": train, "val": val, "pics": root / "pics", "root": root}


def files_flags(data, val=True):
    flags = ["--train-ann", data["train"], "--train-images", data["pics"]]
    return flags + (["--val-ann", data["val"], "--val-images", data["pics"]] if val else [])


def test_train_on_files_saves_categories_eval_names_them_and_the_same_command_resumes(data, tmp_path):
    work = tmp_path / "run"
    command = ["train", *files_flags(data), "--work-dir", work, "--epochs", 1, "--batch-per-gpu", 2,
               "--accumulate", 1, "--set", "cache_dir=" + str(tmp_path / "cache"), *TINY, "--from-scratch"]
    proc = atss(*command)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((work / "config.json").read_text())
    assert config["derived"]["num_classes"] == 3 and config["train_ann"] == str(data["train"])
    # Label order is the sorted ids; names travel with the checkpoint (read back as predict does).
    from atss_cli.inference.checkpoint import read_checkpoint_info

    want = sorted(CATEGORIES, key=lambda c: c["id"])
    for name in ("latest.pth", "epoch_1.pth"):
        assert torch.load(work / name, weights_only=False)["categories"] == want, name
    info = read_checkpoint_info(work / "epoch_1.pth")
    assert info.class_names == ["lamp", "mug", "kettle"]
    assert [r["epoch"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "val"] == [1]

    again = atss(*command)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout + again.stderr and "starting afresh" not in again.stdout + again.stderr
    # The same work dir on data with other categories is not a resume of that run.
    other = write_split(tmp_path / "other", "train", 2, CATEGORIES[:2] + [{"id": 4, "name": "cup"}])
    proc = atss("train", "--train-ann", other, "--train-images", tmp_path / "other" / "pics",
                *command[9:])
    assert_one_line_error(proc, "is a run on other categories (run only: 9 'mug'; data only: 4 'cup')")

    ev = atss("eval", "--ann", data["val"], "--images", data["pics"], "--checkpoint", work / "epoch_1.pth",
              "--device", "cpu", "--workers", 0, "--per-class", "--json", tmp_path / "m.json",
              "--results", tmp_path / "dets.json", "--cache-dir", tmp_path / "cache")
    assert ev.returncode == 0, ev.stderr
    assert set(json.loads((tmp_path / "m.json").read_text())["per_class"]) == {"lamp", "mug", "kettle"}
    for name in ("lamp", "mug", "kettle"):
        assert name in ev.stdout


def test_load_from_another_class_count_says_so_in_one_line(data, tmp_path):
    from atss_cli.model import build_atss

    torch.manual_seed(0)
    model = build_atss(num_classes=5, depth=18, fpn_channels=32, head_channels=64, stacked_convs=1)
    ckpt = tmp_path / "five.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    proc = atss("train", *files_flags(data, val=False), "--work-dir", tmp_path / "ft", "--load-from", ckpt,
                "--batch-per-gpu", 2, "--set", "max_iters=1", "--set", "cache_dir=" + str(tmp_path / "cache"),
                *TINY)
    assert proc.returncode == 0, proc.stderr
    out = (proc.stdout + proc.stderr).splitlines()
    said = [line for line in out if "weights from" in line]
    assert len(said) == 1, out
    assert said[0].endswith(f"weights from {ckpt}: all but bbox_head.atss_cls "
                            "(5 -> 3 classes, freshly initialised)"), said
    # Every other weight came from the file; the classifier is the fresh init's (bias = prior).
    trained = torch.load(tmp_path / "ft" / "latest.pth", weights_only=False)["state_dict"]
    assert trained["bbox_head.atss_cls.weight"].shape[0] == 3
    assert torch.equal(trained["backbone.conv1.weight"], model.state_dict()["backbone.conv1.weight"])


@pytest.mark.parametrize("case, needle", [
    ("coco+files", "not both"),
    ("ann only", "--train-ann needs --train-images"),
    ("images only", "--train-images needs --train-ann"),
    ("val ann only", "--val-ann needs --val-images"),
    ("no data", "give --coco ROOT, or --train-ann"),
    ("missing json", "annotation file not found"),
    ("other categories", "list different categories"),
])
def test_bad_dataset_flags_are_one_line_errors(data, tmp_path, case, needle):
    pics, train, val = data["pics"], data["train"], data["val"]
    args = {
        "coco+files": ["--coco", data["root"], "--train-ann", train, "--train-images", pics],
        "ann only": ["--train-ann", train],
        "images only": ["--train-images", pics],
        "val ann only": ["--train-ann", train, "--train-images", pics, "--val-ann", val],
        "no data": [],
        "missing json": ["--train-ann", tmp_path / "none.json", "--train-images", pics],
        "other categories": ["--train-ann", train, "--train-images", pics, "--val-ann",
                             write_split(tmp_path, "other", 1, CATEGORIES[:2] + [{"id": 4, "name": "mug"}]),
                             "--val-images", tmp_path / "pics"],
    }[case]
    proc = atss("train", *args, "--work-dir", tmp_path / "w", "--set", "cache_dir=" + str(tmp_path / "c"),
                *TINY, "--from-scratch")
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "w" / "latest.pth").exists()
