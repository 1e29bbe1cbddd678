// Launches only: the kernel body is box_iou/box_iou_kernel.h, which the CPU harness runs too.
#include "box_iou/box_iou.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_iou/box_iou_kernel.h"
#include "common/checks.h"

namespace atss {
namespace {

__global__ void box_iou_kernel(const float* __restrict__ boxes1, const float* __restrict__ boxes2, int64_t n,
                               int64_t m, int64_t total, float* __restrict__ out) {
  box_iou_thread(blockIdx.x, static_cast<int>(threadIdx.x), boxes1, boxes2, n, m, total, out);
}

}  // namespace

at::Tensor box_iou_cuda(const at::Tensor& boxes1_, const at::Tensor& boxes2_) {
  check_box_iou_args(boxes1_, boxes2_);
  TORCH_CHECK(boxes1_.is_cuda(), "box_iou_cuda: boxes1 must be on a CUDA device, got ", boxes1_.device());
  const c10::cuda::CUDAGuard guard(boxes1_.device());
  const at::Tensor boxes1 = boxes1_.contiguous(), boxes2 = boxes2_.contiguous();
  const bool batched = boxes1.dim() == 3;
  const int64_t b = batched ? boxes1.size(0) : 1, n = boxes1.size(-2), m = boxes2.size(-2);
  at::Tensor out = batched ? at::empty({b, n, m}, boxes1.options()) : at::empty({n, m}, boxes1.options());
  const int64_t total = b * n * m;
  if (total == 0) return out;
  const Launch launch = box_iou_launch(total);
  TORCH_CHECK(launch.blocks < (int64_t{1} << 31), "box_iou: too many pairs, got ", total);
  box_iou_kernel<<<static_cast<unsigned>(launch.blocks), launch.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      boxes1.data_ptr<float>(), boxes2.data_ptr<float>(), n, m, total, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CUDA, m) { m.impl("box_iou", &atss::box_iou_cuda); }
