"""Builds only the C++/CUDA extension `atss_cli._C`; metadata lives in pyproject.toml.

The CPU kernels always build. The CUDA kernels build when torch is a CUDA build and nvcc is
found (CUDA_HOME, default /usr/local/cuda), or when ATSS_FORCE_CUDA=1, unless ATSS_NO_CUDA=1 (`make demo`
on a machine without a GPU: the demo runs on the CPU, and the CUDA compile is most of the set-up), for
TORCH_CUDA_ARCH_LIST (default 8.0;9.0+PTX: sm_80 and sm_90 code, PTX for newer GPUs). The
compiler flags (C++20, the arithmetic that keeps CPU == CUDA exact) live in
atss_cli/build_flags.py; NVCC_PREPEND_FLAGS / NVCC_APPEND_FLAGS are dropped with a warning.
A failed CUDA compile retries with the CPU kernels only; ATSS_NO_EXTENSION=1, or a failed CPU
compile, installs the package without the extension: the ops then run their pure-PyTorch
reference, `atss env` says so, and importing the ops on a machine with a GPU warns.
ATSS_REQUIRE_EXTENSION=1 (make test, CI) turns any failed compile into an error instead.
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_flags():
    # by path: importing the atss_cli package here would need its dependencies at build time
    path = os.path.join(HERE, "atss_cli", "build_flags.py")
    spec = importlib.util.spec_from_file_location("atss_build_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_flags = _load_build_flags()
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
os.environ["TORCH_CUDA_ARCH_LIST"] = build_flags.cuda_archs()


def _extensions():
    if os.environ.get("ATSS_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    nvcc = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    with_cuda = bool(cu) and os.environ.get("ATSS_NO_CUDA") != "1" and (
        os.environ.get("ATSS_FORCE_CUDA") == "1" or (torch.version.cuda is not None and nvcc)
    )
    define_macros = []
    cxx = list(build_flags.CXX_FLAGS)
    kwargs = dict(
        name="atss_cli._C",
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        define_macros=define_macros,
    )
    cpu_ext = CppExtension(sources=cpp, **{**kwargs, "define_macros": list(define_macros),
                                           "extra_compile_args": {"cxx": list(cxx)}})
    if with_cuda:
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        ccbin, warning = build_flags.clean_nvcc_environ()
        if warning:
            print(warning, file=sys.stderr)
        define_macros += build_flags.cuda_define_macros(archs)
        # our own -gencode flags: torch then adds none, on every torch version
        kwargs["extra_compile_args"]["nvcc"] = build_flags.nvcc_flags(archs, ccbin)
        ext = CUDAExtension(sources=cpp + cu, **kwargs)
    else:
        ext = cpu_ext

    class OptionalBuildExtension(BuildExtension):
        """A failed compile leaves a working package: CPU kernels only when the CUDA build
        fails, the pure-PyTorch fallback when nothing builds (ATSS_REQUIRE_EXTENSION=1: fail)."""

        def run(self):
            # run() replaces the compiler by an object and clears `inplace`: a retry needs both back.
            compiler, inplace = self.compiler, self.inplace
            try:
                super().run()
                return
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if os.environ.get("ATSS_REQUIRE_EXTENSION") == "1":
                    raise
                if not with_cuda:
                    print(f"WARNING: atss extension not built ({exc}); using the PyTorch fallback",
                          file=sys.stderr)
                    return
                print(f"WARNING: atss CUDA kernels not built ({exc}); retrying with the CPU kernels only",
                      file=sys.stderr)
            for attr in ("sources", "include_dirs", "library_dirs", "libraries", "define_macros",
                         "extra_compile_args", "extra_link_args", "runtime_library_dirs"):
                setattr(ext, attr, getattr(cpu_ext, attr))  # the finalized Extension, CPU only
            self.compiler, self.inplace = compiler, inplace
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001
                print(f"WARNING: atss extension not built ({exc}); using the PyTorch fallback",
                      file=sys.stderr)

    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
