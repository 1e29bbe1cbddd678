// Build facts only nvcc knows (detectron2's cuda_version.cu).
#include <cuda_runtime_api.h>

#include <string>

namespace atss {

std::string cuda_compiler_version() {
  return std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__) + "." +
         std::to_string(__CUDACC_VER_BUILD__);
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace atss
