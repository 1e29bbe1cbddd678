"""`atss bench data`: the OpenCV stages, the DataLoader at N workers and the workers-needed line on
generated JPEGs; the torchvision decoder path run on the CPU (where it decodes with libjpeg-turbo,
as OpenCV does); bad flags are one line."""

from __future__ import annotations

import json
import math

import pytest

from cli_run import assert_one_line_error, atss

SMALL = ["--images", "4", "--repeats", "1", "--image-size", "128x96", "--scale", "160x128"]


def test_stages_loaders_and_workers_needed(tmp_path):
    out = tmp_path / "d.json"
    proc = atss("bench", "data", *SMALL, "--workers", "0", "--workers", "1", "--loader-batches", "2",
                "--target-ips", "1000", "--images-dir", tmp_path / "img", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    stages = {s["stage"]: s for s in r["stages"]}
    assert list(stages) == ["decode", "resize", "uint8", "pipeline", "sample"]
    for s in stages.values():
        assert s["ms_per_image"] > 0 and s["images_per_s"] == pytest.approx(1e3 / s["ms_per_image"])
    # A worker's sample includes the decode and the pipeline after it.
    assert stages["sample"]["ms_per_image"] > stages["decode"]["ms_per_image"]
    assert "160x128" not in stages["resize"]["note"] and "160x120" in stages["resize"]["note"]
    assert [(ld["workers"], ld["images"]) for ld in r["loaders"]] == [(0, 4), (1, 4)]
    assert r["workers_needed"] == math.ceil(1000 / stages["sample"]["images_per_s"])
    assert r["gpu_decoder"] is None and r["setting"]["data"]["size"] == "128x96"
    assert "needs" in proc.stdout and "OpenCV workers" in proc.stdout
    assert "TrainDataset[i]" in proc.stdout  # printed as written, not read as Rich markup


def test_torchvision_decoder_path_on_the_cpu(tmp_path):
    from atss_cli.benchmarks.data import gpu_decoder
    from atss_cli.benchmarks.images import coco_size_images

    made = coco_size_images(tmp_path / "img", 4, size=(128, 96))
    paths = sorted(str(p) for p in (tmp_path / "img").glob("*.jpg"))
    r = gpu_decoder(paths, (1333, 800), batch=2, repeats=1, device="cpu")
    assert made["count"] == 4 and r["compared_images"] == 4 and r["images_per_s"] > 0
    assert r["decode_vs_opencv"] == {"max_abs": 0.0, "mean_abs": 0.0}   # the same libjpeg-turbo decode
    # Float bilinear against cv2's fixed-point INTER_LINEAR: off by one grey level at most, rarely.
    assert 0 < r["resize_vs_opencv"]["max_abs"] <= 1 and r["resize_vs_opencv"]["mean_abs"] < 0.3
    assert r["decode_resize_vs_opencv"] == r["resize_vs_opencv"]


def test_bad_flags_are_one_line(tmp_path):
    import torch

    from atss_cli.benchmarks.images import coco_size_images

    if not torch.cuda.is_available():
        assert_one_line_error(atss("bench", "data", *SMALL, "--decoder", "torchvision-gpu"),
                              "--decoder torchvision-gpu", "CUDA")
    assert_one_line_error(atss("bench", "data", "--decoder", "pillow"), "--decoder")
    assert_one_line_error(atss("bench", "data", *SMALL, "--target-ips", "0"), "--target-ips")
    assert_one_line_error(atss("bench", "data", "--image-size", "12"), "1333x800")
    made = coco_size_images(tmp_path / "few", 4, size=(96, 64))
    assert_one_line_error(atss("bench", "data", *SMALL, "--train-ann", made["ann"], "--train-images", made["images"],
                               "--workers", "0", "--loader-batches", "5"), "--loader-batches 5", "has 4")
