"""Loads the compiled extension `atss_cli._C` and says, when it is missing, exactly why.

Importing `_C` registers the `torch.ops.atss.*` kernels (CPU, and CUDA when it was built with
CUDA). Without it every op runs its pure-PyTorch reference (`atss_cli.ops.reference`).
"""

from __future__ import annotations

import torch  # noqa: F401 - the extension links against torch's libraries: load them first

_FIX = ("build it with `make install` (or `pip install --no-build-isolation -e .` with a "
        "compiler, ninja and pybind11); ATSS_REQUIRE_EXTENSION=1 makes a failed build an error")

try:
    from atss_cli import _C  # type: ignore[attr-defined]
except (ImportError, OSError) as exc:  # not built, built against another torch, or a missing library
    _C = None
    _REASON = f"atss_cli._C not built: {exc}"
else:
    _REASON = ""


def available() -> bool:
    """Whether the compiled kernels are loaded."""
    return _C is not None


def reason() -> str:
    """Why the extension is not loaded ('' when it is), with what to do about it."""
    return f"{_REASON}; {_FIX}" if _REASON else ""


def has_cuda() -> bool:
    """Whether the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda())


def supports(device: torch.device) -> bool:
    """Whether the extension has kernels for tensors on `device`."""
    if device.type == "cpu":
        return available()
    if device.type == "cuda":
        return has_cuda()
    return False


def unsupported_reason(device: torch.device) -> str:
    if not available():
        return reason()
    return (f"the atss extension has no kernels for {device.type} tensors "
            f"(built with CUDA: {has_cuda()})")


def build_info() -> dict:
    """Build facts reported by the compiled module (empty when it is missing)."""
    if _C is None:
        return {}
    return dict(_C.build_info())


def describe() -> str:
    """One line for `atss env` and the Makefile."""
    if _C is None:
        return f"extension: not loaded ({reason()}); ops run the pure-PyTorch reference"
    info = build_info()
    cuda = (f"with CUDA {info.get('cuda_version')} for archs {info.get('cuda_archs')}"
            if info.get("with_cuda") else "CPU only (built without CUDA)")
    return f"extension: loaded from {_C.__file__}, {cuda}, compiler {info.get('compiler')}"


BACKENDS = ("auto", "extension", "reference")


def use_extension(backend: str, device: torch.device) -> bool:
    """Resolves an op's `backend` argument: True to run the kernels, False for the reference.

    "auto" takes the kernels when they exist for `device`; "extension" insists on them.
    """
    from atss_cli.ops.checks import OpsInputError

    backend = getattr(backend, "value", backend)  # accept str Enums
    if backend == "reference":
        return False
    if backend == "auto":
        return supports(device)
    if backend == "extension":
        if not supports(device):
            raise OpsInputError(f"backend='extension' is not usable: {unsupported_reason(device)}")
        return True
    raise OpsInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
