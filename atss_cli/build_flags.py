"""The compiler flags of the extension, in one place: setup.py builds with them and
tests/test_build_ptx.py compiles the kernels to PTX with them.

Importable without torch and without running setup(): setup.py loads this file by path.
The arithmetic flags are what keeps CPU == CUDA exact; the environment cannot change them
(`clean_nvcc_environ` drops the variables through which nvcc reads extra flags).
"""

from __future__ import annotations

import os
import shlex

# sm_80 and sm_90 machine code, and compute_90 PTX that the driver compiles for newer GPUs
# (sm_100, sm_120 ...) instead of failing with "no kernel image". Two archs keep the build
# on 2 cores at a few minutes.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

# torch < 2.13 defaults to -std=c++17 and torch 2.14's headers need C++20; torch adds its
# own -std only when none is given, so passing it here never duplicates.
CXX_STD = "-std=c++20"

# No fused multiply-adds on the host either (aarch64 would fuse), so the CPU kernels compute
# what the CUDA kernels compute.
CXX_FLAGS = ["-O3", CXX_STD, "-ffp-contract=off"]

# The CPU and CUDA kernels share their arithmetic and must agree bit for bit: no fused
# multiply-add, no flush of denormals to zero, IEEE-rounded division and square root. Each is
# spelled out (not left to nvcc's defaults): an explicit value beats --use_fast_math, which
# only changes the defaults. A later explicit `-ftz=true` would still win (nvcc: "the last
# value of this option was used"), hence clean_nvcc_environ.
NVCC_ARITHMETIC_FLAGS = ["-fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true"]

NVCC_FLAGS = ["-O3", CXX_STD, *NVCC_ARITHMETIC_FLAGS, "--expt-relaxed-constexpr",
              # the fatbinary stays uncompressed so that tests can read its kernels (and the
              # driver skips a decompression at load)
              "--no-compress",
              "-Xcompiler", "-ffp-contract=off"]

# nvcc adds these variables' contents to every command line (nvcc --help, "NVCC_PREPEND_FLAGS").
NVCC_ENV_FLAGS = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS")
_CCBIN = ("-ccbin", "--compiler-bindir")


def cuda_archs(environ=None) -> str:
    """The arch list to build for: TORCH_CUDA_ARCH_LIST when set, else DEFAULT_CUDA_ARCHS."""
    environ = os.environ if environ is None else environ
    return (environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS).strip()


def parse_archs(archs: str) -> list[tuple[str, bool]]:
    """'8.0;9.0+PTX' -> [('80', False), ('90', True)]: (sm number, with PTX)."""
    out = []
    for item in archs.replace(" ", ";").split(";"):
        if not item:
            continue
        version, ptx = (item[:-4], True) if item.endswith("+PTX") else (item, False)
        major, _, minor = version.partition(".")
        if not (major.isdigit() and minor[:1].isdigit()):
            raise ValueError(f"bad CUDA arch {item!r} in TORCH_CUDA_ARCH_LIST={archs!r}")
        out.append((major + minor, ptx))
    return out


def gencode_flags(archs: str) -> list[str]:
    """nvcc -gencode flags for an arch list (what torch would derive, but ours on every torch)."""
    flags = []
    for num, ptx in parse_archs(archs):
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def split_ccbin(flags: list[str]) -> tuple[list[str], list[str]]:
    """(the last host-compiler choice among `flags`: -ccbin X or --compiler-bindir=X, the
    other flags)."""
    keep, drop, i = [], [], 0
    while i < len(flags):
        f = flags[i]
        if f in _CCBIN and i + 1 < len(flags):
            keep, i = flags[i:i + 2], i + 2
            continue
        if f.startswith(tuple(c + "=" for c in _CCBIN)):
            keep = [f]
        else:
            drop.append(f)
        i += 1
    return keep, drop


def clean_nvcc_environ(environ=None) -> tuple[list[str], str]:
    """Removes NVCC_PREPEND_FLAGS / NVCC_APPEND_FLAGS from `environ` (os.environ by default).

    Returns (the host-compiler choice they held, which our build passes on itself; a one-line
    warning naming what was dropped, '' when nothing was). Dropping (not failing) because
    toolchains such as conda's set these variables for their host compiler: the build still
    works, with our arithmetic.
    """
    environ = os.environ if environ is None else environ
    kept, dropped = [], []
    for name in NVCC_ENV_FLAGS:
        value = environ.pop(name, None)
        if value is None:
            continue
        ccbin, rest = split_ccbin(shlex.split(value))
        kept = ccbin or kept  # nvcc takes one host compiler: the later variable's, as nvcc would
        if rest:
            dropped.append(f"{name}={shlex.join(rest)}")
    if not dropped:
        return kept, ""
    return kept, ("WARNING: atss ignores " + "; ".join(dropped)
                  + " (the kernels' arithmetic is fixed by atss_cli/build_flags.py)")


def nvcc_flags(archs: str, ccbin=()) -> list[str]:
    """The nvcc flags of the build (torch adds its defines, includes and -fPIC)."""
    return [*NVCC_FLAGS, *ccbin, *gencode_flags(archs)]


def cuda_define_macros(archs: str) -> list[tuple[str, str | None]]:
    """The macros of a CUDA build: the kernels are compiled in, and the arch list they report."""
    return [("ATSS_WITH_CUDA", None), ("ATSS_CUDA_ARCHS", f'"{archs}"')]


def ptx_flags(sm: str, archs: str) -> list[str]:
    """The build's own nvcc flags for `nvcc -ptx` at compute_<sm> (one arch instead of the
    -gencode list); torch's includes and defines are the caller's."""
    defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in cuda_define_macros(archs)]
    return [*NVCC_FLAGS, *defines, f"-arch=compute_{sm}", "-ptx"]


def kernel_image_for(capability: str, archs: str) -> str | None:
    """Which code of a build for `archs` a GPU of `capability` ('8.6') runs: machine code of
    the same major version and no higher minor ('sm_80'), else PTX of an arch no higher than
    the GPU's, compiled by the driver ('compute_90 PTX'); None: "no kernel image"."""
    major, _, minor = capability.partition(".")
    cap = (int(major), int(minor or 0))
    parsed, exact = [], []
    for num, ptx in parse_archs(archs):
        digits = num.rstrip("abcdefghijklmnopqrstuvwxyz")
        arch = (int(digits[:-1]), int(digits[-1]))
        if digits != num:  # sm_90a / sm_100f: arch-specific code, runs on that very arch only
            exact.append((arch, num))
        else:
            parsed.append((arch, ptx))
    for arch, num in exact:
        if arch == cap:
            return f"sm_{num}"
    sass = [a for a, _ in parsed if a[0] == cap[0] and a[1] <= cap[1]]
    if sass:
        a = max(sass)
        return f"sm_{a[0]}{a[1]}"
    ptx = [a for a, with_ptx in parsed if with_ptx and a <= cap]
    if ptx:
        a = max(ptx)
        return f"compute_{a[0]}{a[1]} PTX"
    return None
