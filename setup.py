"""Builds only the C++/CUDA extension `atss_cli._C`; metadata lives in pyproject.toml.

The CPU kernels always build. The CUDA kernels build when torch is a CUDA build and nvcc is
found (CUDA_HOME, default /usr/local/cuda), for TORCH_CUDA_ARCH_LIST (default 8.0;9.0), or when
ATSS_FORCE_CUDA=1. A failed CUDA compile retries with the CPU kernels only; ATSS_NO_EXTENSION=1,
or a failed CPU compile, installs the package without the extension: the ops then run their
pure-PyTorch reference and `atss env` says so. ATSS_REQUIRE_EXTENSION=1 (make test, CI) turns
any failed compile into an error instead.
"""

import glob
import os
import sys

from setuptools import setup

os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")


def _extensions():
    if os.environ.get("ATSS_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    nvcc = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    with_cuda = bool(cu) and (
        os.environ.get("ATSS_FORCE_CUDA") == "1" or (torch.version.cuda is not None and nvcc)
    )
    define_macros = []
    # -ffp-contract=off: no fused multiply-adds on the host either (aarch64 would fuse), so
    # the CPU kernels compute what the CUDA kernels (-fmad=false) compute.
    cxx = ["-O3", "-ffp-contract=off"]
    kwargs = dict(
        name="atss_cli._C",
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": cxx},
        define_macros=define_macros,
    )
    cpu_ext = CppExtension(sources=cpp, **{**kwargs, "define_macros": list(define_macros),
                                           "extra_compile_args": {"cxx": list(cxx)}})
    if with_cuda:
        define_macros += [
            ("ATSS_WITH_CUDA", None),
            ("ATSS_CUDA_ARCHS", '"' + os.environ["TORCH_CUDA_ARCH_LIST"] + '"'),
        ]
        # -fmad=false: the CPU kernels and the CUDA kernels share their arithmetic and must
        # agree bit for bit; nvcc would otherwise fuse multiply-adds the CPU does not.
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-fmad=false", "--expt-relaxed-constexpr",
                                            "-Xcompiler", "-ffp-contract=off"]
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
