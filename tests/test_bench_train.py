"""`atss bench train`: the training iteration with its real loader on generated JPEGs, a tiny model
for a few steps on the CPU; the JSON's fields exist and agree with each other; bad flags are one line."""

from __future__ import annotations

import json

import pytest

from cli_run import assert_one_line_error, atss

TINY = ["--device", "cpu", "--preset", "tiny", "--scale", "96x64", "--image-size", "128x96", "--threads", "1"]


def _forward_flops_per_image(size_hw):
    """FLOPs of the tiny model's forward alone on one padded image, counted independently."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from atss_cli.model import build_atss_preset

    model = build_atss_preset("tiny", num_classes=4)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *size_hw))
    return counter.get_total_flops()


def test_generated_jpegs_report(tmp_path):
    out = tmp_path / "t.json"
    proc = atss("bench", "train", *TINY, "--steps", "3", "--warmup", "1", "--workers", "1", "--batch", "2",
                "--peak-tflops", "0.5", "--profile", "--images-dir", tmp_path / "img", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    s = r["setting"]
    assert (s["processes"], s["accumulate"], s["batch"], s["workers"], s["steps"]) == (1, 1, 2, 1, 3)
    assert s["data"]["source"] == "generated" and s["data"]["size"] == "128x96" and s["data"]["count"] >= 2 * 5
    assert r["images"] == 6 and r["images_per_s"] == pytest.approx(6 / r["window_s"])
    st = r["step_s"]
    assert 0 < st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]
    assert sum([st["mean"]] * 3) == pytest.approx(r["window_s"], rel=0.05)  # steps tile the window
    assert 0 <= r["loader_wait_share"] < 1 and r["loader_wait_s"] <= r["window_s"]
    assert r["host_syncs_per_step"] is None and r["host_sync_note"] == "n/a (CPU)"
    # 128x96 fits 96x64 as 85x64, padded to 96x64: forward + backward of a fully trained model is
    # about 3x the forward (the loss and assignment add little).
    fwd = _forward_flops_per_image((64, 96))
    assert 2.0 * fwd < r["flops_per_image"] < 3.5 * fwd
    assert r["flops_per_step"] == pytest.approx(2 * r["flops_per_image"])
    assert r["achieved_tflops"] == pytest.approx(r["flops_per_image"] * 6 / r["window_s"] / 1e12)
    assert r["peak_tflops"] == 0.5 and r["peak_fraction"] == pytest.approx(r["achieved_tflops"] / 0.5)
    assert r["peak_memory_gb"] > 0.05 and "RSS" in r["peak_memory_kind"]
    assert all(v > 0 for v in r["mean_losses"])
    names = [p["name"] for p in r["profile"]]
    assert len(names) == 15 and any("conv" in n for n in names)
    assert r["environment"]["torch"] and "cpu" in r["environment"]["devices"] and r["diagnostic_errors"] == {}
    assert "images/s" in proc.stdout and "n/a (CPU)" in proc.stdout and "loader wait" in proc.stdout


def test_train_ann_across_epochs(tmp_path):
    """Four images at batch 2, two steps an epoch: the run's 1 + 2 + 1 steps cross an epoch end."""
    from atss_cli.benchmarks.images import coco_size_images

    made = coco_size_images(tmp_path / "data", 4, size=(96, 64))
    out = tmp_path / "t.json"
    proc = atss("bench", "train", *TINY, "--steps", "2", "--warmup", "1", "--workers", "0",
                "--train-ann", made["ann"], "--train-images", made["images"], "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["setting"]["data"]["source"] == "train_ann" and r["setting"]["train_images"] == 4
    assert r["images"] == 4 and r["peak_fraction"] is None and "--peak-tflops" in r["peak_basis"]


def test_bad_flags_are_one_line(tmp_path):
    import torch

    if not torch.cuda.is_available():
        assert_one_line_error(atss("bench", "train", "--device", "cuda"), "--device cuda", "no CUDA")
    assert_one_line_error(atss("bench", "train", *TINY, "--scale", "big"), "1333x800")
    assert_one_line_error(atss("bench", "train", *TINY, "--peak-tflops", "-1"), "--peak-tflops")
    assert_one_line_error(atss("bench", "train", *TINY, "--preset", "huge"), "--preset", "huge")
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    assert_one_line_error(atss("bench", "train", *TINY, "--train-ann", ann), "--train-images")
    assert_one_line_error(atss("bench", "train", *TINY, "--train-ann", tmp_path / "missing.json"), "missing.json")


def test_sync_counting_counts_the_debug_warnings(monkeypatch):
    """The CUDA sync count without a GPU: sync debug mode's warnings, emitted here by a stand-in
    step, are counted per step and attributed to the line that raised them; other warnings not."""
    import warnings

    import torch

    from atss_cli.benchmarks import train as bench

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step(run, pos, batches, stop):
        warnings.warn("called a synchronizing CUDA operation", UserWarning)
        warnings.warn("called a synchronizing CUDA operation", UserWarning)
        warnings.warn("something else", UserWarning)
        return pos + 1, 2, None

    monkeypatch.setattr(bench, "_one_step", step)
    pos, per_step, sites = bench._count_syncs(None, 0, None, None, 3)
    assert pos == 3 and per_step == 2.0 and modes == ["warn", "default"]
    first = step.__code__.co_firstlineno
    assert sorted((where.rsplit("/", 1)[-1], n) for where, n in sites) == [
        (f"test_bench_train.py:{first + 1}", 3), (f"test_bench_train.py:{first + 2}", 3)]


def test_a_failing_diagnostic_keeps_the_figures(tmp_path, monkeypatch):
    """The profiler (or the FLOP count) failing after the timed window is reported, and the
    measured figures are still returned: a device call has one try."""
    from atss_cli.benchmarks import train as bench

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI not found\nmore")

    monkeypatch.setattr(bench, "_profile", broken)
    r = bench.bench_train(device="cpu", preset="tiny", scale=(96, 64), image_size=(128, 96), steps=1, warmup=0,
                          workers=0, profile=True, threads=1, images_dir=tmp_path / "img")
    assert r["images"] == 2 and r["images_per_s"] > 0 and r["flops_per_step"] > 0
    assert r["profile"] is None and r["diagnostic_errors"] == {"profile": "RuntimeError: CUPTI not found"}
