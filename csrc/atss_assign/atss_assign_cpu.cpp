#include "atss_assign/atss_assign.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/atss_candidates.h"
#include "common/checks.h"
#include "common/coop.h"
#include "common/levels_cpu.h"

namespace atss {

std::tuple<at::Tensor, at::Tensor> atss_assign_cpu(const at::Tensor& anchors_, const at::Tensor& valid_,
                                                   at::IntArrayRef level_sizes, const at::Tensor& gt_boxes_,
                                                   const at::Tensor& num_gt_, int64_t topk,
                                                   at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                   const std::optional<at::Tensor>& extent) {
  at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  // The CPU kernel is the oracle of the CUDA geometry path: it checks the geometry and ignores it.
  check_geometry_args(levels, gt_boxes_, grid_hw, strides, extent);
  TORCH_CHECK(gt_boxes_.device().is_cpu(), "atss_assign_cpu: tensors must be on the CPU, got ",
              gt_boxes_.device());
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t b = gt_boxes.size(0), m = gt_boxes.size(1), n = anchors.size(0);
  const int64_t num_levels = levels.size(0), slots = num_levels * topk;
  // `assigned` first holds the claims: [b, i] = the best (IoU, GT) claim on anchor i so far,
  // 0 = none (atss::pack_claim); the last pass decodes them in place.
  at::Tensor assigned = at::zeros({b, n}, gt_boxes.options().dtype(at::kLong));
  at::Tensor iou = at::empty({b, n}, gt_boxes.options());
  auto* keys = reinterpret_cast<uint64_t*>(assigned.data_ptr<int64_t>());
  const bool* v = valid.data_ptr<bool>();

  if (b > 0 && m > 0 && n > 0) {
    const float* a = anchors.data_ptr<float>();
    detect_grids_cpu(a, levels);
    const at::Tensor counts = count_valid_cpu(valid, levels);
    const int64_t* lv = levels.data_ptr<int64_t>();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    const float* g = gt_boxes.data_ptr<float>();
    const int64_t* ng = num_gt.data_ptr<int64_t>();
    at::parallel_for(0, b * m, kGtGrain, [&](int64_t begin, int64_t end) {
      TopK top;
      std::vector<int64_t> cand(slots);
      std::vector<float> ious(slots);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i = t / m, j = t % m;
        if (j >= std::clamp<int64_t>(ng[i], 0, m)) continue;
        const float* gt = g + 4 * t;
        gt_candidates_cpu(a, v + i * n, lv, cnt + i * num_levels, num_levels, topk, gt, top, cand.data());
        for (int64_t s = 0; s < slots; ++s) ious[s] = cand[s] >= 0 ? box_iou(a + 4 * cand[s], gt) : 0.0f;
        int count = 0;
        const float thr = gt_threshold(cand.data(), static_cast<int>(slots), [&](int s) { return ious[s]; }, &count);
        if (count < 2) continue;  // a single candidate: undefined std, no positive
        for (int64_t s = 0; s < slots; ++s) {
          if (cand[s] >= 0 && is_positive(a, cand[s], gt, thr, ious[s]))
            atomic_max_u64(keys + i * n + cand[s], pack_claim(ious[s], j));
        }
      }
    });
  }

  int64_t* out_a = assigned.data_ptr<int64_t>();
  float* out_i = iou.data_ptr<float>();
  at::parallel_for(0, b * n, kAnchorGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const uint64_t key = keys[t];  // the same memory as out_a[t]: read, then overwrite
      out_a[t] = !v[t] ? -2 : (key ? claim_gt(key) : -1);
      out_i[t] = key ? claim_iou(key) : 0.0f;
    }
  });
  return {assigned, iou};
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CPU, m) { m.impl("atss_assign", &atss::atss_assign_cpu); }
