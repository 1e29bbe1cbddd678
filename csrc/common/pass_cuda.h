// The CUDA one-pass of topk_candidates and atss_assign (common/gt_pass.h): its arguments
// from checked, contiguous inputs, and its launch.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/gt_pass.h"

namespace atss {

// The pass arguments but the output (keys / cand_out). Without geometry, launches the prepare
// kernel (grid detection and valid counts on the device, no sync); the tensors it fills are
// appended to `hold`, which must outlive the pass.
PassArgs pass_args_cuda(const at::Tensor& anchors, const at::Tensor& valid, const at::Tensor& levels_cpu,
                        const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk,
                        const std::optional<Geometry>& geometry, std::vector<at::Tensor>& hold);

// One launch of the pass (nothing when B * M == 0).
void launch_gt_pass_cuda(const PassArgs& args);

}  // namespace atss
