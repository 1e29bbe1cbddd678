// CUDA preparation shared by topk_candidates and atss_assign: the level table with grid
// detection, and the valid anchors per (image, level), computed on the device without a sync.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace atss {

constexpr int kMaxCudaLevels = 32;  // levels travel to the kernels as kernel arguments

// levels_cpu: int64 [L, 4] from check_assign_args (start, size filled). Returns, on the
// anchors' device, the full level table int64 [L, 4] and the valid counts int64 [B, L].
std::tuple<at::Tensor, at::Tensor> prepare_levels_cuda(const at::Tensor& anchors, const at::Tensor& valid,
                                                       const at::Tensor& levels_cpu);

}  // namespace atss
