"""Loads the compiled extension `atss_cli._C` and says, when it is missing, exactly why.

Importing `_C` registers the `torch.ops.atss.*` kernels (CPU, and CUDA when it was built with
CUDA). Without it every op runs its pure-PyTorch reference (`atss_cli.ops.reference`).

The fallbacks are loud where they cost a GPU user: importing this module on a machine with a
GPU warns once (`FallbackWarning`) when the extension has no CUDA kernels, and an op given
CUDA tensors then runs the reference on the GPU after a one-time warning naming the reason
(a result, slowly, rather than an error: the reference is the spec the kernels match;
backend="extension" raises instead).
"""

from __future__ import annotations

import warnings

import torch  # the extension links against torch's libraries: load them first

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


class FallbackWarning(UserWarning):
    """The ops run their pure-PyTorch reference where CUDA kernels were expected."""


_CUDA_FIX = ("rebuild with a CUDA build of torch and nvcc found (CUDA_HOME): `make install` or "
             "`pip install --no-build-isolation -e .`; ATSS_REQUIRE_EXTENSION=1 makes a failed "
             "CUDA build an error")
_warned: set[str] = set()


def no_cuda_kernels_reason() -> str:
    """Why CUDA tensors cannot run on the kernels ('' when they can), with the fix."""
    if has_cuda():
        return ""
    if _C is None:
        return f"the extension is not loaded ({_REASON}); {_CUDA_FIX}"
    return f"the extension was built without CUDA ({_C.__file__}); {_CUDA_FIX}"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, FallbackWarning, stacklevel=3)


def warn_if_gpu_without_cuda_kernels() -> None:
    """At import: one warning when a GPU is there but the extension has no CUDA kernels."""
    # torch.version.cuda first: a CPU build of torch cannot use the GPU, and skipping the
    # driver query keeps the import free of CUDA initialisation where it cannot matter.
    if has_cuda() or torch.version.cuda is None or not torch.cuda.is_available():
        return
    _warn_once("import", "atss: a GPU is present but CUDA tensors will run the slow pure-PyTorch "
               f"reference: {no_cuda_kernels_reason()}")


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


def describe_archs(archs: str) -> str:
    """'8.0;9.0+PTX' -> 'sm_80, sm_90 code + compute_90 PTX (JIT on newer GPUs)'."""
    from atss_cli import build_flags

    try:
        parsed = build_flags.parse_archs(archs)
    except ValueError:
        return f"archs {archs!r}"
    text = ", ".join(f"sm_{num}" for num, _ in parsed) + " code"
    ptx = [num for num, with_ptx in parsed if with_ptx]
    if ptx:
        text += " + " + ", ".join(f"compute_{num}" for num in ptx) + " PTX (JIT on newer GPUs)"
    return text


def describe() -> str:
    """One line for `atss env` and the Makefile."""
    if _C is None:
        return f"extension: not loaded ({reason()}); ops run the pure-PyTorch reference"
    info = build_info()
    cuda = (f"with CUDA {info.get('cuda_version')} for {describe_archs(info.get('cuda_archs') or '')}"
            if info.get("with_cuda") else "CPU only (built without CUDA)")
    return f"extension: loaded from {_C.__file__}, {cuda}, compiler {info.get('compiler')}"


BACKENDS = ("auto", "extension", "reference")


def use_extension(backend: str, device: torch.device) -> bool:
    """Resolves an op's `backend` argument: True to run the kernels, False for the reference.

    "auto" takes the kernels when they exist for `device`; for CUDA tensors without CUDA
    kernels it runs the reference (same result, on the GPU, much slower) after a one-time
    `FallbackWarning` naming the reason. "extension" insists on the kernels (error otherwise).
    """
    from atss_cli.ops.checks import OpsInputError

    backend = getattr(backend, "value", backend)  # accept str Enums
    if backend == "reference":
        return False
    if backend == "auto":
        if supports(device):
            return True
        if device.type == "cuda":
            _warn_once("cuda-tensor", "atss: CUDA tensors run the slow pure-PyTorch reference: "
                       + no_cuda_kernels_reason())
        return False
    if backend == "extension":
        if not supports(device):
            raise OpsInputError(f"backend='extension' is not usable: {unsupported_reason(device)}")
        return True
    raise OpsInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


warn_if_gpu_without_cuda_kernels()
