// Launches only: the kernel body is common/gt_pass.h in candidates mode (and
// common/levels_kernel.h without geometry), which the CPU harness (csrc/harness) runs too.
#include "topk_candidates/topk_candidates.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/pass_cuda.h"

namespace atss {

at::Tensor topk_candidates_cuda(const at::Tensor& anchors_, const at::Tensor& valid_, at::IntArrayRef level_sizes,
                                const at::Tensor& gt_boxes_, const at::Tensor& num_gt_, int64_t topk,
                                at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                const std::optional<at::Tensor>& extent) {
  const at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  const auto geometry = check_geometry_args(levels, gt_boxes_, grid_hw, strides, extent);
  TORCH_CHECK(gt_boxes_.is_cuda(), "topk_candidates_cuda: tensors must be on a CUDA device, got ",
              gt_boxes_.device());
  const c10::cuda::CUDAGuard guard(gt_boxes_.device());
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t slots = levels.size(0) * topk;
  at::Tensor out = at::empty({gt_boxes.size(0), gt_boxes.size(1), slots}, gt_boxes.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  std::vector<at::Tensor> hold;
  PassArgs args = pass_args_cuda(anchors, valid, levels, gt_boxes, num_gt, topk, geometry, hold);
  args.cand_out = out.data_ptr<int64_t>();
  launch_gt_pass_cuda(args);
  return out;
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CUDA, m) { m.impl("topk_candidates", &atss::topk_candidates_cuda); }
