// Launches only: the kernel bodies are common/gt_pass.h (and common/levels_kernel.h without
// geometry), which the CPU harness (csrc/harness) runs too.
#include "atss_assign/atss_assign.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/gt_pass.h"
#include "common/pass_cuda.h"

namespace atss {
namespace {

__global__ void decode_kernel(const bool* __restrict__ valid, const uint64_t* keys, int64_t total, int64_t* assigned,
                              float* __restrict__ iou) {
  decode_thread(blockIdx.x, static_cast<int>(threadIdx.x), valid, keys, total, assigned, iou);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> atss_assign_cuda(const at::Tensor& anchors_, const at::Tensor& valid_,
                                                    at::IntArrayRef level_sizes, const at::Tensor& gt_boxes_,
                                                    const at::Tensor& num_gt_, int64_t topk,
                                                    at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                    const std::optional<at::Tensor>& extent) {
  const at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  const auto geometry = check_geometry_args(levels, gt_boxes_, grid_hw, strides, extent);
  TORCH_CHECK(gt_boxes_.is_cuda(), "atss_assign_cuda: tensors must be on a CUDA device, got ", gt_boxes_.device());
  const c10::cuda::CUDAGuard guard(gt_boxes_.device());
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t b = gt_boxes.size(0), m = gt_boxes.size(1), n = anchors.size(0);
  // `assigned` first holds the claims: [b, i] = the best (IoU, GT) claim on anchor i, 0 = none
  // (atss::pack_claim); decode_kernel turns them into GT indices in place.
  at::Tensor assigned = at::zeros({b, n}, gt_boxes.options().dtype(at::kLong));
  at::Tensor iou = at::empty({b, n}, gt_boxes.options());
  if (b * n == 0) return {assigned, iou};
  auto* keys = reinterpret_cast<uint64_t*>(assigned.data_ptr<int64_t>());
  if (m > 0) {
    std::vector<at::Tensor> hold;
    PassArgs args = pass_args_cuda(anchors, valid, levels, gt_boxes, num_gt, topk, geometry, hold);
    args.keys = keys;
    launch_gt_pass_cuda(args);
  }
  const Launch launch = decode_launch(b * n);
  TORCH_CHECK(launch.blocks < (int64_t{1} << 31), "atss_assign: B * N too large, got ", b * n);
  decode_kernel<<<static_cast<unsigned>(launch.blocks), launch.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      valid.data_ptr<bool>(), keys, b * n, assigned.data_ptr<int64_t>(), iou.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {assigned, iou};
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CUDA, m) { m.impl("atss_assign", &atss::atss_assign_cuda); }
