// The pybind11 module atss_cli._C: importing it registers the ops (ops.cpp and the backends'
// TORCH_LIBRARY_IMPL blocks); its functions report how it was built (detectron2's vision.cpp).
// pybind11 and torch's version header only: <torch/extension.h> would take this file from a few
// seconds to most of a minute to compile, and nothing here touches a tensor.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#ifndef ATSS_CUDA_ARCHS
#define ATSS_CUDA_ARCHS ""
#endif

namespace atss {
#ifdef ATSS_WITH_CUDA
std::string cuda_compiler_version();  // cuda_version.cu: nvcc's version, seen from nvcc
int cuda_runtime_version();
#endif

namespace {

std::string host_compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

bool with_cuda() {
#ifdef ATSS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["with_cuda"] = with_cuda();
  d["compiler"] = host_compiler();
  d["cplusplus"] = static_cast<long>(__cplusplus);
#ifdef TORCH_VERSION
  d["torch_version"] = std::string(TORCH_VERSION);
#endif
#ifdef ATSS_WITH_CUDA
  d["cuda_version"] = cuda_compiler_version();
  d["cuda_runtime_version"] = cuda_runtime_version();
  d["cuda_archs"] = std::string(ATSS_CUDA_ARCHS);
#else
  d["cuda_version"] = pybind11::none();
  d["cuda_runtime_version"] = pybind11::none();
  d["cuda_archs"] = pybind11::none();
#endif
  return d;
}

}  // namespace
}  // namespace atss

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ATSS label assignment kernels; the ops live in torch.ops.atss";
  m.def("with_cuda", &atss::with_cuda, "Whether the CUDA kernels were compiled in");
  m.def("build_info", &atss::build_info,
        "Build facts: with_cuda, cuda_version (nvcc), cuda_runtime_version, cuda_archs, compiler, torch_version");
}
