"""`atss bench model` on the tiny preset: rows, options and the CLI (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atss_cli.benchmarks.model import MODES, bench_model, parse_size, synthetic_batch
from atss_cli.errors import AtssError


def test_bench_rows_tiny_cpu():
    rows = bench_model(devices=["cpu"], sizes=[(100, 70)], preset="tiny", num_classes=3, repeats=2, warmup=0)
    assert [r.mode for r in rows] == list(MODES)
    for r in rows:
        assert r.size == "100x70" and r.padded == "128x96" and r.batch == 2 and r.depth == 18
        assert 0 < r.min_s <= r.median_s <= r.max_s and r.images_per_s > 0
        assert r.peak_gb is None  # CUDA only
    assert rows[-1].detections is not None


def test_bench_amp_and_channels_last_cpu():
    rows = bench_model(devices=["cpu"], sizes=[(64, 64)], modes=["train", "predict"], preset="tiny",
                       num_classes=3, batch=1, amp="bf16", channels_last=True, repeats=1, warmup=0,
                       dense_scores=True)
    assert [r.amp for r in rows] == ["bf16", "bf16"] and all(r.channels_last for r in rows)
    assert rows[-1].detections > 0  # dense scores: every pair passes the threshold


def test_bench_bad_options():
    with pytest.raises(AtssError, match="WxH|width"):
        parse_size("800")
    with pytest.raises(AtssError, match="mode"):
        bench_model(modes=["backward"], preset="tiny")


def test_synthetic_batch_is_padded_and_boxes_inside():
    images, targets = synthetic_batch(3, (100, 70), 5, boxes_per_image=4)
    assert images.shape == (3, 3, 96, 128) and images[:, :, 70:].abs().sum() == 0
    for t in targets:
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 100).all() and (b[:, 3] <= 70).all()
        assert (b[:, 2] > b[:, 0]).all() and t["labels"].max() < 5


def test_cli_json_and_no_torch_at_import(tmp_path):
    code = "import sys, atss_cli.cli.bench_model; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from atss_cli.cli.main import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "model", "--device", "cpu", "--preset", "tiny", "--size", "64x64", "--mode", "forward",
               "--repeats", "1", "--warmup", "0", "--batch", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] and data["rows"][0]["mode"] == "forward"
    assert main(["bench", "model", "--size", "12x12"]) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_bench_cuda_bf16_channels_last_tiny():
    """The CUDA path of the benchmark itself (bench/gpu-check.sh times R50 with these options)."""
    rows = bench_model(devices=["cuda"], sizes=[(160, 128)], modes=["train", "predict"], preset="tiny",
                       num_classes=3, batch=2, amp="bf16", channels_last=True, repeats=2, warmup=1)
    assert [r.mode for r in rows] == ["train", "predict"]
    for r in rows:
        assert r.device.startswith("cuda (") and r.peak_gb > 0 and r.images_per_s > 0
