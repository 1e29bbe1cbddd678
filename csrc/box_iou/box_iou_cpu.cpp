#include "box_iou/box_iou.h"

#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/atss_math.h"
#include "common/checks.h"

namespace atss {

at::Tensor box_iou_cpu(const at::Tensor& boxes1_, const at::Tensor& boxes2_) {
  check_box_iou_args(boxes1_, boxes2_);
  TORCH_CHECK(boxes1_.device().is_cpu(), "box_iou_cpu: boxes1 must be on the CPU, got ", boxes1_.device());
  const at::Tensor boxes1 = boxes1_.contiguous(), boxes2 = boxes2_.contiguous();
  const bool batched = boxes1.dim() == 3;
  const int64_t b = batched ? boxes1.size(0) : 1, n = boxes1.size(-2), m = boxes2.size(-2);
  at::Tensor out = batched ? at::empty({b, n, m}, boxes1.options()) : at::empty({n, m}, boxes1.options());
  const float* p1 = boxes1.data_ptr<float>();
  const float* p2 = boxes2.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1));
  at::parallel_for(0, b * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* a = p1 + 4 * r;
      const float* g = p2 + 4 * (r / n) * m;
      float* o = po + r * m;
      for (int64_t j = 0; j < m; ++j) o[j] = box_iou(a, g + 4 * j);
    }
  });
  return out;
}

}  // namespace atss

TORCH_LIBRARY_IMPL(atss, CPU, m) { m.impl("box_iou", &atss::box_iou_cpu); }
