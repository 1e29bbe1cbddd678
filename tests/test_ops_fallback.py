"""Loud fallbacks: a machine with a GPU but an extension without CUDA kernels warns once at
import, and CUDA tensors on backend="auto" run the reference after one warning naming the
reason. Proven on the CPU by monkeypatching torch.cuda.is_available and the extension's
has_cuda, and by calling the dispatch decision (extension.use_extension) directly."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from atss_cli.ops import extension
from atss_cli.ops.checks import OpsInputError

CUDA = torch.device("cuda")


@pytest.fixture
def no_cuda_kernels(monkeypatch):
    """An extension without CUDA kernels on a machine with a GPU; the one-time warnings reset."""
    monkeypatch.setattr(extension, "has_cuda", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(extension, "_warned", set())


def _caught(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [w for w in caught if issubclass(w.category, extension.FallbackWarning)]


def test_gpu_without_cuda_kernels_warns_once(no_cuda_kernels):
    _, first = _caught(extension.warn_if_gpu_without_cuda_kernels)
    _, again = _caught(extension.warn_if_gpu_without_cuda_kernels)
    assert len(first) == 1 and not again
    text = str(first[0].message)
    assert "\n" not in text and "GPU is present" in text and "reference" in text
    assert ("built without CUDA" in text or "not loaded" in text) and "make install" in text


@pytest.mark.parametrize("case", ["no GPU", "CPU torch", "CUDA kernels"])
def test_no_import_warning_where_nothing_is_lost(monkeypatch, case):
    monkeypatch.setattr(extension, "_warned", set())
    monkeypatch.setattr(extension, "has_cuda", lambda: case == "CUDA kernels")
    monkeypatch.setattr(torch.version, "cuda", None if case == "CPU torch" else "13.0")

    def is_available():
        assert case == "no GPU", "the driver is queried only where it can matter"
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    assert _caught(extension.warn_if_gpu_without_cuda_kernels)[1] == []


def test_import_warns_in_a_fresh_process():
    code = ("import sys, torch; sys.modules['atss_cli._C'] = None\n"
            "torch.cuda.is_available = lambda: True; torch.version.cuda = '13.0'\n"
            "from atss_cli import ops\n"
            "import atss_cli.ops.extension\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = [line for line in res.stderr.splitlines() if "FallbackWarning" in line]
    assert len(lines) == 1, res.stderr
    assert "atss_cli._C not built" in lines[0] and "GPU is present" in lines[0]


def test_cuda_tensors_fall_back_to_the_reference_with_one_warning(no_cuda_kernels):
    use, first = _caught(extension.use_extension, "auto", CUDA)
    assert use is False and len(first) == 1
    text = str(first[0].message)
    assert "\n" not in text and "CUDA tensors run the slow pure-PyTorch reference" in text
    assert "built without CUDA" in text or "not loaded" in text
    use, again = _caught(extension.use_extension, "auto", CUDA)
    assert use is False and not again
    assert _caught(extension.use_extension, "reference", CUDA) == (False, [])
    with pytest.raises(OpsInputError, match="no kernels for cuda|not built"):
        extension.use_extension("extension", CUDA)


def test_cpu_tensors_never_warn(no_cuda_kernels):
    assert _caught(extension.use_extension, "auto", torch.device("cpu")) == (extension.available(), [])


def test_missing_extension_names_the_build_failure(monkeypatch, no_cuda_kernels):
    monkeypatch.setattr(extension, "_C", None)
    monkeypatch.setattr(extension, "_REASON", "atss_cli._C not built: simulated")
    use, caught = _caught(extension.use_extension, "auto", CUDA)
    assert use is False and "not loaded (atss_cli._C not built: simulated)" in str(caught[0].message)


def test_cuda_kernels_dispatch_without_warning(monkeypatch):
    monkeypatch.setattr(extension, "_warned", set())
    monkeypatch.setattr(extension, "has_cuda", lambda: True)
    assert extension.no_cuda_kernels_reason() == ""
    assert _caught(extension.use_extension, "auto", CUDA) == (True, [])


def test_describe_archs_names_machine_code_and_ptx():
    assert extension.describe_archs("8.0;9.0+PTX") == "sm_80, sm_90 code + compute_90 PTX (JIT on newer GPUs)"
    assert extension.describe_archs("9.0") == "sm_90 code"
