"""`atss bench model --backend onnxruntime`: predict rows beside the PyTorch ones, from a file or
a model exported on the fly; the --json rows carry backend, median_s and s_per_image."""

from __future__ import annotations

import json

from cli_run import assert_one_line_error, atss


def test_both_backends_in_one_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = atss("bench", "model", "--preset", "tiny", "--size", "96x64", "--mode", "predict", "--batch", "2",
                "--repeats", "2", "--warmup", "0", "--threads", "1", "--backend", "torch",
                "--backend", "onnxruntime", "--json", out)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["backend"] for r in rows) == ["onnxruntime", "torch"]
    for r in rows:
        assert r["mode"] == "predict" and r["size"] == "96x64" and r["batch"] == 2 and r["depth"] == 18
        assert r["median_s"] > 0 and abs(r["s_per_image"] - r["median_s"] / 2) < 1e-12
        assert r["threads"] == 1
    assert "onnxruntime" in proc.stdout and "s/img" in proc.stdout


def test_onnx_file_and_bad_flags(tmp_path):
    import torch

    from atss_cli.export.onnx_export import export_onnx
    from atss_cli.model import build_atss

    ckpt = tmp_path / "m.pth"
    torch.manual_seed(0)
    model = build_atss(num_classes=2, depth=18, fpn_channels=32, head_channels=32, stacked_convs=1)
    torch.save({"state_dict": model.state_dict(),
                "config": {"depth": 18, "fpn_channels": 32, "head_channels": 32, "stacked_convs": 1}}, ckpt)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(ckpt, onnx_path)
    out = tmp_path / "b.json"
    proc = atss("bench", "model", "--backend", "onnxruntime", "--onnx", onnx_path, "--size", "64x64",
                "--batch", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["backend"] == "onnxruntime" and row["depth"] == 18 and row["s_per_image"] == row["median_s"]
    assert_one_line_error(atss("bench", "model", "--backend", "onnxruntime", "--mode", "train", "--size", "64x64"),
                          "predict only")
    assert_one_line_error(atss("bench", "model", "--onnx", onnx_path, "--size", "64x64", "--mode", "predict"),
                          "--backend onnxruntime")
    foreign = tmp_path / "x.onnx"
    foreign.write_bytes(b"junk")
    assert_one_line_error(atss("bench", "model", "--backend", "onnxruntime", "--onnx", foreign, "--size", "64x64"),
                          str(foreign))
