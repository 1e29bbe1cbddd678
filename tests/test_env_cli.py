"""`atss env` and `atss bench assigner`: what they report, their JSON, their one-line errors,
and `atss --help` staying free of torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atss_cli.cli.main import main


def test_help_does_not_import_torch():
    code = ("import sys; from atss_cli.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'atss_cli._C' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_env_reports_versions_extension_and_gpus(tmp_path, capsys):
    import torch

    from atss_cli.ops import extension

    path = tmp_path / "env.json"
    assert main(["env", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    for word in ("python", "torch", "extension", "GPU"):
        assert word in text
    data = json.loads(path.read_text())
    assert data["torch"] == torch.__version__
    assert data["extension_loaded"] == extension.available()
    if extension.available():
        assert "loaded" in text and data["extension_with_cuda"] == extension.has_cuda()
        if data["extension_with_cuda"]:
            assert data["extension_cuda_archs"] and data["extension_cuda_version"]
    else:
        assert "NOT loaded" in text and data["extension_reason"]
    assert len(data["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_env_says_why_without_extension():
    code = ("import sys; sys.modules['atss_cli._C'] = None\n"
            "from atss_cli.cli.main import main; sys.exit(main(['env']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0
    assert "NOT loaded" in res.stdout and "atss_cli._C not built" in res.stdout.replace("\n", " ")


def test_bench_assigner_quick_json(tmp_path, capsys):
    path, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "assigner", "--quick", "--num-gt", "8", "--repeats", "3", "--device", "cpu",
                 "--json", str(path), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "median" in out
    result = json.loads(path.read_text())
    assert result["environment"]["torch"]
    rows = result["rows"]
    assert {(r["backend"], r["batch"], r["num_gt"]) for r in rows} >= {("reference", 2, 8)}
    for r in rows:
        if r["median_ms"] is not None:
            assert r["runs"] == 3 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["peak_mb"] > 0
    ext = [r for r in rows if r["backend"] == "extension" and r["median_ms"]]
    ref = [r for r in rows if r["backend"] == "reference"][0]
    for r in ext:
        assert r["speedup"] == pytest.approx(ref["median_ms"] / r["median_ms"])
        assert r["positives"] == ref["positives"]
    assert "| device |" in md.read_text()


def test_bench_assigner_skips_reference_over_budget(capsys):
    from atss_cli.benchmarks import assigner

    result = assigner.run(assigner.Settings(batches=(1,), num_gts=(50,), devices=("cpu",), repeats=2,
                                            warmup=1, reference_memory_gb=0.001))
    ref = [r for r in result["rows"] if r["backend"] == "reference"][0]
    assert ref["median_ms"] is None and "skipped" in ref["note"] and "GB" in ref["note"]


def test_bench_assigner_errors_are_one_line(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "assigner", "--device", "cuda", "--quick"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda") and err.count("\n") == 1
    assert main(["bench", "assigner", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "assigner", "--num-gt", "-3"]) != 0


@pytest.mark.parametrize("capability, with_cuda, image", [
    ((9, 0), True, "sm_90"), ((8, 6), True, "sm_80"), ((12, 0), True, "compute_90 PTX"),
    ((7, 5), True, None), ((9, 0), False, None)])
def test_env_says_which_code_each_gpu_runs(monkeypatch, capsys, capability, with_cuda, image):
    """A faked GPU: machine code of its major version, else the PTX, else none; and why CUDA
    ops would run the reference."""
    import types

    import torch

    from atss_cli.ops import extension

    props = types.SimpleNamespace(major=capability[0], minor=capability[1], name="Fake GPU", total_memory=2**34)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(extension, "has_cuda", lambda: with_cuda)
    info = {"with_cuda": with_cuda, "cuda_version": "13.0.88" if with_cuda else None,
            "cuda_archs": "8.0;9.0+PTX" if with_cuda else None, "compiler": "gcc", "torch_version": "x"}
    monkeypatch.setattr(extension, "build_info", lambda: info)
    assert main(["env"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    from atss_cli.environment import collect_env

    data = collect_env()
    gpu = data["gpus"][0]
    assert gpu["kernel_image"] == image and gpu["kernels_built_for_it"] == (image is not None)
    if image:
        assert f"runs the {image} code" in text
    if with_cuda:
        assert data["extension_cuda_code"] == "sm_80, sm_90 code + compute_90 PTX (JIT on newer GPUs)"
        assert data["ops_backend_cuda"] == "extension" and data["ops_cuda_fallback_reason"] is None
        assert (image is None) == ("no kernels built for this arch" in text)
    else:
        assert data["ops_backend_cuda"] == "reference" and "make install" in data["ops_cuda_fallback_reason"]
        assert "ops on CUDA reference (" in text
