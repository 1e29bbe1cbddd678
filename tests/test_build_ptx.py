"""The PTX audit: our kernels' PTX, compiled with the build's own flags
(atss_cli/build_flags.py, which setup.py reads), has only IEEE-exact arithmetic, the
environment cannot change it, and the built extension holds sm_80 and sm_90 machine code for
every kernel plus PTX for newer GPUs, itself exact (the PTX setup.py's nvcc lines produced).

PTX, not machine code, is where to look: in SASS a correctly rounded `div.rn` / `sqrt.rn`
legitimately expands to FFMA and MUFU sequences. Kernel names are found in the PTX, never
listed here. Skipped without nvcc (CI has it); the .so is read with the small fatbinary
parser below (no cuobjdump needed).
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import struct
import subprocess
import sysconfig
from pathlib import Path

import pytest

from atss_cli import build_flags

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted(glob.glob(str(ROOT / "csrc" / "**" / "*.cu"), recursive=True))
AUDIT_SMS = ("90", "80")  # the archs the default build ships machine code for
REQUIRED_ARCHS = build_flags.DEFAULT_CUDA_ARCHS


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA_HOME or PATH): the PTX audit "
                                "needs it; CI has it")

# -- PTX: functions, the call graph from the kernels, the instructions that are not exact ---------

_FUNC = re.compile(r"^[ \t]*(?:\.(?:visible|weak|extern)\s+)*\.(entry|func)\s+(?:\([^)]*\)\s*)?([\w$.]+)",
                   re.MULTILINE)
_CALL = re.compile(r"\bcall(?:\.uni)?\s+(?:\([^)]*\)\s*,\s*)?([\w$.]+)")
FORBIDDEN = {
    "fused multiply-add": re.compile(r"\bfma\.|\bmad(?:\.[a-z0-9]+)*\.(?:f16|bf16|f32|f64)(?:x2)?\b"),
    "flush to zero": re.compile(r"\.ftz\b"),
    "approximate division": re.compile(r"\bdiv\.(?:approx|full)\b"),
    "approximate square root": re.compile(r"\bsqrt\.approx\b"),
    "approximate reciprocal": re.compile(r"\b(?:rcp|rsqrt)\.approx\b"),
    "approximate transcendental": re.compile(r"\b(?:ex2|lg2|sin|cos|tanh)\.approx\b"),
}


def ptx_functions(ptx: str) -> tuple[dict[str, str], set[str]]:
    """({name: body} of every function defined in `ptx`, the names that are kernels)."""
    bodies, entries = {}, set()
    for m in _FUNC.finditer(ptx):
        i, depth = m.end(), 0
        while i < len(ptx) and not (depth == 0 and ptx[i] in "{;"):  # past the parameter list
            depth += {"(": 1, ")": -1}.get(ptx[i], 0)
            i += 1
        if i == len(ptx) or ptx[i] == ";":
            continue  # a declaration
        start, depth = i, 0
        while True:
            depth += {"{": 1, "}": -1}.get(ptx[i], 0)
            i += 1
            if depth == 0:
                break
        bodies[m.group(2)] = ptx[start:i]
        if m.group(1) == "entry":
            entries.add(m.group(2))
    return bodies, entries


def audit_ptx(ptx: str) -> tuple[set[str], list[str]]:
    """(the kernels, one line per inexact instruction in them or the functions they call)."""
    bodies, entries = ptx_functions(ptx)
    reached, todo = set(), sorted(entries)
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [callee for callee in _CALL.findall(bodies[name]) if callee in bodies]
    bad = []
    for name in sorted(reached):
        for line in bodies[name].splitlines():
            code = line.split("//", 1)[0].strip()
            bad += [f"{what}: `{code}` in {name}" for what, rx in FORBIDDEN.items() if rx.search(code)]
    return entries, bad


def compile_ptx(source: str, sm: str, environ: dict | None = None) -> str:
    """`nvcc -ptx` of one source, the way setup.py compiles it (flags and environment)."""
    from torch.utils import cpp_extension

    env = dict(os.environ if environ is None else environ)
    build_flags.clean_nvcc_environ(env)  # as setup.py does before the build
    includes = [ROOT / "csrc", *cpp_extension.include_paths("cuda"), sysconfig.get_paths()["include"]]
    cmd = [NVCC, *cpp_extension.COMMON_NVCC_FLAGS, *(f"-I{p}" for p in includes),
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
           *build_flags.ptx_flags(sm, build_flags.cuda_archs()), source, "-o", "-"]
    return _run(cmd, env)


def _run(cmd: list[str], env: dict) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def ptx() -> dict[tuple[str, str], str]:
    """{(source, sm): PTX} for every .cu file and audited arch, compiled in parallel."""
    jobs = [(cu, sm) for cu in CU_FILES for sm in AUDIT_SMS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = pool.map(lambda job: compile_ptx(*job), jobs)
        return dict(zip(jobs, texts))


def kernel_names(ptx: dict) -> set[str]:
    return {name for (_, sm), text in ptx.items() if sm == AUDIT_SMS[0] for name in ptx_functions(text)[1]}


def test_kernels_ptx_has_only_exact_arithmetic(ptx):
    assert CU_FILES, "no csrc/**/*.cu"
    found, bad = set(), []
    for (cu, sm), text in ptx.items():
        entries, problems = audit_ptx(text)
        found |= entries
        bad += [f"{os.path.relpath(cu, ROOT)} sm_{sm}: {p}" for p in problems]
    assert found, "no .entry in the PTX of " + ", ".join(CU_FILES)
    assert not bad, f"{len(bad)} inexact instructions:\n" + "\n".join(bad[:40])


_PROBE = r"""
__device__ float helper(float a, float b) { return a / b + sqrtf(a) * b + rsqrtf(b); }
__global__ void probe_kernel(float* o, const float* a, const float* b) {
  o[threadIdx.x] = helper(a[threadIdx.x], b[threadIdx.x]) * a[0] + b[1];
}
"""


def test_audit_finds_fast_math_in_a_called_function(tmp_path):
    """The audit can fail: --use_fast_math PTX of a kernel calling a non-inlined function."""
    src = tmp_path / "probe.cu"
    src.write_text(_PROBE.replace("__device__ float", "__device__ __noinline__ float"))
    fast = _run([NVCC, "-ptx", "-arch=compute_90", "--use_fast_math", str(src), "-o", "-"], dict(os.environ))
    entries, bad = audit_ptx(fast)
    assert entries == {"_Z12probe_kernelPfPKfS1_"}
    found = {line.split(":")[0] for line in bad}
    assert found >= {"fused multiply-add", "flush to zero", "approximate division", "approximate square root",
                     "approximate reciprocal"}, bad
    assert any("in _Z6helperff" in line for line in bad)  # reached through the call graph
    exact = _run([NVCC, *build_flags.ptx_flags("90", "9.0"), str(src), "-o", "-"], dict(os.environ))
    # the build's flags leave only rsqrtf, approximate by definition (2 ulp)
    assert {line.split(":")[0] for line in audit_ptx(exact)[1]} == {"approximate reciprocal"}


def test_environment_nvcc_flags_do_not_change_the_ptx(ptx, tmp_path):
    """NVCC_APPEND_FLAGS=--use_fast_math (and a PREPEND that would win) change nothing, because
    setup.py drops them; without that, nvcc would apply them (the control on the probe)."""
    cu = min((cu for cu, sm in ptx if sm == "90" and ptx_functions(ptx[cu, sm])[1]), key=os.path.getsize)
    hostile = {**os.environ, "NVCC_APPEND_FLAGS": "--use_fast_math", "NVCC_PREPEND_FLAGS": "-lineinfo"}
    assert compile_ptx(cu, "90", hostile) == ptx[cu, "90"]

    src = tmp_path / "probe.cu"
    src.write_text(_PROBE.replace("+ rsqrtf(b)", ""))
    flags = [NVCC, *build_flags.ptx_flags("90", "9.0"), str(src), "-o", "-"]
    wins = {**os.environ, "NVCC_APPEND_FLAGS": "-ftz=true -prec-div=false"}
    clean = dict(wins)
    _, warning = build_flags.clean_nvcc_environ(clean)
    assert "NVCC_APPEND_FLAGS=-ftz=true -prec-div=false" in warning
    assert not audit_ptx(_run(flags, clean))[1]
    assert audit_ptx(_run(flags, wins))[1], "nvcc no longer reads NVCC_APPEND_FLAGS?"


def test_clean_nvcc_environ_keeps_only_the_host_compiler():
    env = {"NVCC_PREPEND_FLAGS": "-ccbin /usr/bin/g++-12 --use_fast_math", "NVCC_APPEND_FLAGS": "-O0",
           "PATH": "/bin"}
    ccbin, warning = build_flags.clean_nvcc_environ(env)
    assert env == {"PATH": "/bin"} and ccbin == ["-ccbin", "/usr/bin/g++-12"]
    assert warning.count("\n") == 0 and "NVCC_PREPEND_FLAGS=--use_fast_math" in warning and "-O0" in warning
    assert build_flags.clean_nvcc_environ({"NVCC_APPEND_FLAGS": "--compiler-bindir=/x"}) == (
        ["--compiler-bindir=/x"], "")
    assert build_flags.clean_nvcc_environ({}) == ([], "")


def test_build_flags_fix_the_arithmetic_and_the_archs():
    flags = build_flags.nvcc_flags("8.0;9.0+PTX")
    for flag in ("-std=c++20", "-fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "--no-compress"):
        assert flags.count(flag) == 1, flag
    assert "--use_fast_math" not in flags and "-ffp-contract=off" in flags
    assert [f for f in flags if f.startswith("-gencode")] == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    assert build_flags.CXX_FLAGS.count("-std=c++20") == 1
    assert build_flags.cuda_archs({}) == "8.0;9.0+PTX" == REQUIRED_ARCHS
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX" in makefile
    with pytest.raises(ValueError, match="9.x"):
        build_flags.parse_archs("8.0;9.x")


# -- the built extension: its .nv_fatbin section -------------------------------------------------

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2
COMPRESSED = 0x2000 | 0x8000  # the entry flag of older and newer nvcc


def elf_sections(data: bytes) -> dict[str, tuple[int, int, int, int]]:
    """{name: (type, offset, size, link)} of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = heads[shstrndx][4]

    def name(off):
        return data[names + off:data.index(b"\0", names + off)].decode()

    return {name(h[0]): (h[1], h[4], h[5], h[6]) for h in heads}


def elf_function_symbols(data: bytes) -> set[str]:
    """The names of the function symbols of an ELF file (a cubin's kernels among them)."""
    sections = list(elf_sections(data).values())
    out = set()
    for kind, off, size, link in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        stroff = sections[link][1]
        for i in range(0, size, 24):
            st_name, st_info = struct.unpack_from("<IB", data, off + i)
            if st_info & 0xF == 2:  # STT_FUNC
                out.add(data[stroff + st_name:data.index(b"\0", stroff + st_name)].decode())
    return out


def fatbin_entries(fatbin: bytes) -> list[tuple[int, str, int, bytes]]:
    """(kind, sm, flags, payload) of every entry of every container in a .nv_fatbin section."""
    out, pos = [], 0
    while pos + 16 <= len(fatbin):
        magic, _, header, size = struct.unpack_from("<IHHQ", fatbin, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # containers are 8-byte aligned
            continue
        entry, end = pos + header, pos + header + size
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, entry)
            arch, = struct.unpack_from("<I", fatbin, entry + 28)
            flags, = struct.unpack_from("<Q", fatbin, entry + 40)
            data = fatbin[entry + entry_header:entry + entry_header + payload]
            out.append((kind, str(arch), flags, data))
            entry += entry_header + payload
        pos = end
    return out


def normalize(name: str) -> str:
    """Replaces the anonymous-namespace part of a mangled name, which nvcc derives from the
    compilation (`_ZN4atss48_GLOBAL__N__9430490d_15_box_iou_cuda_cu_4745a6be14box_iou...`)."""
    out, i = [], 0
    for m in re.finditer(r"(\d+)_GLOBAL__N__", name):
        if m.start() < i:
            continue
        out.append(name[i:m.start()] + "<anon>")
        i = m.start() + len(m.group(1)) + int(m.group(1))
    return "".join(out) + name[i:]


def test_normalize_anonymous_namespaces():
    a = "_ZN4atss48_GLOBAL__N__9430490d_15_box_iou_cuda_cu_4745a6be14box_iou_kernelEPKfS2_lllPf"
    b = "_ZN4atss48_GLOBAL__N__0123abcd_15_box_iou_cuda_cu_99999999a14box_iou_kernelEPKfS2_lllPf"
    assert normalize(a) == "_ZN4atss<anon>14box_iou_kernelEPKfS2_lllPf" and normalize("_Z1fv") == "_Z1fv"
    assert normalize(b) != normalize(a)  # the length prefix is honoured


def test_built_extension_holds_every_kernel_for_each_arch(ptx):
    from atss_cli.ops import extension

    if not extension.has_cuda():
        why = extension.reason() or "the extension was built without CUDA"
        if os.environ.get("ATSS_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"nvcc is here but {why} (ATSS_REQUIRE_EXTENSION=1)")
        pytest.skip(why)
    built = build_flags.parse_archs(extension.build_info()["cuda_archs"])
    assert set(built) >= set(build_flags.parse_archs(REQUIRED_ARCHS)), (
        f"built for {extension.build_info()['cuda_archs']!r}, want at least {REQUIRED_ARCHS!r}")

    data = Path(extension._C.__file__).read_bytes()
    sections = elf_sections(data)
    assert ".nv_fatbin" in sections, f"{extension._C.__file__} has no .nv_fatbin section"
    _, off, size, _ = sections[".nv_fatbin"]
    entries = fatbin_entries(data[off:off + size])
    compressed = [(kind, sm) for kind, sm, flags, _ in entries if flags & COMPRESSED]
    assert not compressed, f"compressed fatbinary entries {compressed}: the build must pass --no-compress"

    cubins: dict[str, set[str]] = {}
    ptx_text: dict[str, str] = {}
    for kind, sm, _, payload in entries:
        if kind == KIND_ELF:
            cubins.setdefault(sm, set()).update(map(normalize, elf_function_symbols(payload)))
        elif kind == KIND_PTX:
            ptx_text[sm] = ptx_text.get(sm, "") + payload.rstrip(b"\0").decode()
    kernels = {normalize(k) for k in kernel_names(ptx)}
    assert kernels
    for sm, with_ptx in built:
        missing = kernels - cubins.get(sm, set())
        assert not missing, f"no sm_{sm} machine code for {sorted(missing)}"
        if with_ptx:
            in_ptx = {normalize(k) for k in ptx_functions(ptx_text.get(sm, ""))[1]}
            assert kernels <= in_ptx, f"no compute_{sm} PTX for {sorted(kernels - in_ptx)}"
            # the shipped PTX came from setup.py's own nvcc lines: the same audit holds for it
            bad = audit_ptx(ptx_text[sm])[1]
            assert not bad, f"the built compute_{sm} PTX is inexact:\n" + "\n".join(bad[:40])
    newest = max(built, key=lambda a: int(a[0]))
    assert newest[1], f"no PTX for GPUs newer than sm_{newest[0]}"
