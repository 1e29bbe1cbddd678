"""Mixed precision: the one map from an `amp` mode to a torch dtype, and the autocast it means.

    amp_dtype(amp) -> torch.dtype | None       "bf16" / "fp16" -> bfloat16 / float16; None, "",
                                               "none", "fp32" -> None (float32); else AtssError
    autocast(device, amp)                      torch.autocast for that dtype, or a null context
    unwrap_model(model)                        the detector inside a DDP / torch.compile wrapper

Training, evaluation, the Detector and the benchmarks all take `amp` through these.
"""

from __future__ import annotations

import contextlib

from atss_cli.errors import AtssError

AMP_MODES = ("none", "bf16", "fp16")
_FP32 = (None, "", "none", "fp32")


def amp_dtype(amp: str | None):
    import torch

    if amp in _FP32:
        return None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise AtssError(f"unknown amp mode {amp!r}; choose bf16 or fp16")
    return dtypes[amp]


def autocast(device, amp: str | None):
    import torch

    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def unwrap_model(model):
    # DistributedDataParallel / torch.compile wrappers keep the detector in `.module` / `._orig_mod`.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if inner is not None and hasattr(inner, "predict"):
            return inner
    return model
