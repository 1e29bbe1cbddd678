"""Dense peak throughput of known GPUs, for the fraction of peak a benchmark reports.

    peak_tflops(device_name, amp, tf32) -> (TFLOP/s, basis) or (None, reason)

The figures are NVIDIA's datasheet numbers for dense math (the datasheets print the 2:4 sparse
ones, twice these, for the tensor-core rows): H100 SXM and H200 (same SMs and clocks) bf16/fp16
989.5, TF32 494.7, fp32 66.9; H100 PCIe 756 / 378 / 51.2; A100 (SXM and PCIe) 312 / 156 / 19.5;
L40S 362 / 183 / 91.6; L4 121 / 60 / 30.3; V100 SXM2 fp16 125 (no bf16, no TF32), fp32 15.7.
They are boost-clock peaks; a real kernel mix reaches a fraction of them, and a GPU held at a
lower clock (nvidia-smi shows it) lowers the ceiling. `--peak-tflops` overrides the table.

fp32 training on Ampere and later runs its convolutions on TF32 tensor cores when
`torch.backends.cudnn.allow_tf32` is set (PyTorch's default), so fp32 is held against the TF32
peak then, and against the plain fp32 peak otherwise.
"""

from __future__ import annotations

# name fragment -> (bf16/fp16 dense, TF32 dense, fp32), TFLOP/s. Longest fragment first.
TABLE: tuple[tuple[str, tuple[float | None, float | None, float]], ...] = (
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H200", (989.5, 494.7, 66.9)),
    ("H100", (989.5, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("V100", (125.0, None, 15.7)),
)


def peak_tflops(device_name: str, amp: str | None, tf32: bool) -> tuple[float | None, str]:
    """The peak the run's arithmetic can reach on `device_name` and what it is, or (None, why not)."""
    for fragment, (half, tf32_peak, fp32) in TABLE:
        if fragment.lower() in device_name.lower():
            if amp in ("bf16", "fp16"):
                if half is None:
                    break
                return half, f"{fragment} {amp} dense tensor-core peak (datasheet)"
            if tf32 and tf32_peak is not None:
                return tf32_peak, f"{fragment} TF32 dense tensor-core peak (datasheet; cuDNN allow_tf32 is on)"
            return fp32, f"{fragment} fp32 peak (datasheet)"
    return None, f"no peak known for {device_name!r}; give --peak-tflops"
