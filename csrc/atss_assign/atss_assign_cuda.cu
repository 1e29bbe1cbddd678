#include "atss_assign/atss_assign.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/atss_candidates.h"
#include "common/checks.h"
#include "common/levels_cuda.h"
#include "topk_candidates/topk_candidates.h"

namespace atss {
namespace {

constexpr int kThreads = 128;

// One thread per (image, GT): threshold of its candidates (steps 4-5) and an atomic maximum of
// its claims on its positives (step 6, atss::pack_claim).
__global__ void claims_kernel(const float* __restrict__ anchors, const float* __restrict__ gt_boxes,
                              const int64_t* __restrict__ num_gt, const int64_t* __restrict__ cand, int64_t b,
                              int64_t m, int64_t n, int slots, unsigned long long* __restrict__ keys) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= b * m) return;
  const int64_t i = t / m, j = t % m;
  const int64_t ng = num_gt[i] < 0 ? 0 : (num_gt[i] > m ? m : num_gt[i]);
  if (j >= ng) return;
  const float* gt = gt_boxes + 4 * t;
  const int64_t* c = cand + t * slots;
  auto iou_at = [&](int s) { return box_iou(anchors + 4 * c[s], gt); };
  int count = 0;
  const float thr = gt_threshold(c, slots, iou_at, &count);
  if (count < 2) return;  // a single candidate: undefined std, no positive
  for (int s = 0; s < slots; ++s) {
    if (c[s] < 0) continue;
    const float iou = iou_at(s);
    if (is_positive(anchors, c[s], gt, thr, iou))
      atomicMax(keys + i * n + c[s], static_cast<unsigned long long>(pack_claim(iou, j)));
  }
}

// keys and assigned are the same memory: each thread reads its key, then overwrites it.
__global__ void decode_kernel(const bool* __restrict__ valid, const unsigned long long* keys, int64_t total,
                              int64_t* assigned, float* __restrict__ iou) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const uint64_t key = keys[t];
  assigned[t] = !valid[t] ? -2 : (key ? claim_gt(key) : -1);
  iou[t] = key ? claim_iou(key) : 0.0f;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> atss_assign_cuda(const at::Tensor& anchors_, const at::Tensor& valid_,
                                                    at::IntArrayRef level_sizes, const at::Tensor& gt_boxes_,
                                                    const at::Tensor& num_gt_, int64_t topk) {
  const at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  TORCH_CHECK(gt_boxes_.is_cuda(), "atss_assign_cuda: tensors must be on a CUDA device, got ", gt_boxes_.device());
  const c10::cuda::CUDAGuard guard(gt_boxes_.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t b = gt_boxes.size(0), m = gt_boxes.size(1), n = anchors.size(0);
  const int64_t slots = levels.size(0) * topk;
  // `assigned` first holds the claims: [b, i] = the best (IoU, GT) claim on anchor i, 0 = none
  // (atss::pack_claim); decode_kernel turns them into GT indices in place.
  at::Tensor assigned = at::zeros({b, n}, gt_boxes.options().dtype(at::kLong));
  at::Tensor iou = at::empty({b, n}, gt_boxes.options());
  if (b * n == 0) return {assigned, iou};
  auto* keys = reinterpret_cast<unsigned long long*>(assigned.data_ptr<int64_t>());
  if (m > 0) {
    const auto [table, counts] = prepare_levels_cuda(anchors, valid, levels);
    at::Tensor cand = at::empty({b, m, slots}, gt_boxes.options().dtype(at::kLong));
    launch_topk_candidates_cuda(anchors, valid, gt_boxes, num_gt, table, counts, topk, cand);
    const auto blocks = static_cast<unsigned>((b * m + kThreads - 1) / kThreads);
    claims_kernel<<<blocks, kThreads, 0, stream>>>(anchors.data_ptr<float>(), gt_boxes.data_ptr<float>(),
                                                   num_gt.data_ptr<int64_t>(), cand.data_ptr<int64_t>(), b, m, n,
                                                   static_cast<int>(slots), keys);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto blocks = static_cast<unsigned>((b * n + kThreads - 1) / kThreads);
  decode_kernel<<<blocks, kThreads, 0, stream>>>(valid.data_ptr<bool>(), keys, b * n,
                                                 assigned.data_ptr<int64_t>(), iou.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {assigned, iou};
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CUDA, m) { m.impl("atss_assign", &atss::atss_assign_cuda); }
