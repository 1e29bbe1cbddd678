#include "topk_candidates/topk_candidates.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/atss_candidates.h"
#include "common/checks.h"
#include "common/levels_cuda.h"

namespace atss {
namespace {

constexpr int kThreads = 128;

// One thread per (level, image, GT), level slowest so that a warp works on one level: the
// per-thread search of common/atss_candidates.h, exactly as the CPU kernel runs it.
__global__ void topk_candidates_kernel(const float* __restrict__ anchors, const bool* __restrict__ valid,
                                       const int64_t* __restrict__ table, const int64_t* __restrict__ counts,
                                       const float* __restrict__ gt_boxes, const int64_t* __restrict__ num_gt,
                                       int64_t b, int64_t m, int64_t n, int num_levels, int topk,
                                       int64_t* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= b * m * num_levels) return;
  const int l = static_cast<int>(t / (b * m));
  const int64_t bg = t % (b * m), i = bg / m, j = bg % m;
  int64_t* o = out + bg * num_levels * topk + static_cast<int64_t>(l) * topk;
  const int64_t ng = num_gt[i] < 0 ? 0 : (num_gt[i] > m ? m : num_gt[i]);
  if (j >= ng) {
    for (int s = 0; s < topk; ++s) o[s] = -1;
    return;
  }
  const float* gt = gt_boxes + 4 * bg;
  const int64_t c = counts[i * num_levels + l];
  TopK top;
  level_candidates(anchors, valid + i * n, table + l * kLevelFieldsCount, static_cast<int>(c < topk ? c : topk),
                   topk, centre_x(gt), centre_y(gt), top, o);
}

}  // namespace

void launch_topk_candidates_cuda(const at::Tensor& anchors, const at::Tensor& valid, const at::Tensor& gt_boxes,
                                 const at::Tensor& num_gt, const at::Tensor& table, const at::Tensor& counts,
                                 int64_t topk, at::Tensor& out) {
  const int64_t b = gt_boxes.size(0), m = gt_boxes.size(1), n = anchors.size(0);
  const int num_levels = static_cast<int>(table.size(0));
  const int64_t total = b * m * num_levels;
  if (total == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  topk_candidates_kernel<<<blocks, kThreads, 0, stream>>>(
      anchors.data_ptr<float>(), valid.data_ptr<bool>(), table.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
      gt_boxes.data_ptr<float>(), num_gt.data_ptr<int64_t>(), b, m, n, num_levels, static_cast<int>(topk),
      out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor topk_candidates_cuda(const at::Tensor& anchors_, const at::Tensor& valid_, at::IntArrayRef level_sizes,
                                const at::Tensor& gt_boxes_, const at::Tensor& num_gt_, int64_t topk) {
  const at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  TORCH_CHECK(gt_boxes_.is_cuda(), "topk_candidates_cuda: tensors must be on a CUDA device, got ",
              gt_boxes_.device());
  const c10::cuda::CUDAGuard guard(gt_boxes_.device());
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t slots = levels.size(0) * topk;
  at::Tensor out = at::empty({gt_boxes.size(0), gt_boxes.size(1), slots}, gt_boxes.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const auto [table, counts] = prepare_levels_cuda(anchors, valid, levels);
  launch_topk_candidates_cuda(anchors, valid, gt_boxes, num_gt, table, counts, topk, out);
  return out;
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CUDA, m) { m.impl("topk_candidates", &atss::topk_candidates_cuda); }
