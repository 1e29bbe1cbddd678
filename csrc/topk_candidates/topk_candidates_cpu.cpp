#include "topk_candidates/topk_candidates.h"

#include <ATen/ops/full.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common/atss_candidates.h"
#include "common/checks.h"
#include "common/levels_cpu.h"

namespace atss {

at::Tensor topk_candidates_cpu(const at::Tensor& anchors_, const at::Tensor& valid_, at::IntArrayRef level_sizes,
                               const at::Tensor& gt_boxes_, const at::Tensor& num_gt_, int64_t topk,
                                                   at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                   const std::optional<at::Tensor>& extent) {
  at::Tensor levels = check_assign_args(anchors_, valid_, level_sizes, gt_boxes_, num_gt_, topk);
  // The CPU kernel is the oracle of the CUDA geometry path: it checks the geometry and ignores it.
  check_geometry_args(levels, gt_boxes_, grid_hw, strides, extent);
  TORCH_CHECK(gt_boxes_.device().is_cpu(), "topk_candidates_cpu: tensors must be on the CPU, got ",
              gt_boxes_.device());
  const at::Tensor anchors = anchors_.contiguous(), valid = valid_.contiguous();
  const at::Tensor gt_boxes = gt_boxes_.contiguous(), num_gt = num_gt_.contiguous();
  const int64_t b = gt_boxes.size(0), m = gt_boxes.size(1), n = anchors.size(0);
  const int64_t num_levels = levels.size(0), slots = num_levels * topk;
  at::Tensor out = at::full({b, m, slots}, -1, gt_boxes.options().dtype(at::kLong));
  if (b == 0 || m == 0) return out;

  const float* a = anchors.data_ptr<float>();
  detect_grids_cpu(a, levels);
  const at::Tensor counts = count_valid_cpu(valid, levels);
  const int64_t* lv = levels.data_ptr<int64_t>();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const bool* v = valid.data_ptr<bool>();
  const float* g = gt_boxes.data_ptr<float>();
  const int64_t* ng = num_gt.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();

  at::parallel_for(0, b * m, kGtGrain, [&](int64_t begin, int64_t end) {
    TopK top;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / m, j = t % m;
      if (j >= std::clamp<int64_t>(ng[i], 0, m)) continue;
      const float* gt = g + 4 * t;
      gt_candidates_cpu(a, v + i * n, lv, cnt + i * num_levels, num_levels, topk, gt, top, o + t * slots);
    }
  });
  return out;
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CPU, m) { m.impl("topk_candidates", &atss::topk_candidates_cpu); }
