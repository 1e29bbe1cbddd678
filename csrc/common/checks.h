// Argument checks shared by the CPU and CUDA entry points. They come first, and each message
// carries the bad value. The Python layer (atss_cli/ops/checks.py) checks the same things
// before calling, plus values (finite coordinates, num_gt range) when asked to.
#pragma once

#include <ATen/ops/zeros.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/atss_candidates.h"

namespace atss {

inline void check_boxes(const at::Tensor& t, const char* name, int64_t dims, const char* shape) {
  TORCH_CHECK(t.dim() == dims && t.size(-1) == 4, name, " must be ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
}

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK((boxes1.dim() == 2 || boxes1.dim() == 3) && boxes1.size(-1) == 4,
              "boxes1 must be [B, N, 4] or [N, 4], got ", boxes1.sizes());
  TORCH_CHECK(boxes2.dim() == boxes1.dim() && boxes2.size(-1) == 4,
              "boxes2 must be ", boxes1.dim() == 3 ? "[B, M, 4]" : "[M, 4]", " like boxes1 ",
              boxes1.sizes(), ", got ", boxes2.sizes());
  TORCH_CHECK(boxes1.dim() == 2 || boxes1.size(0) == boxes2.size(0),
              "boxes2 must have the batch size of boxes1 (", boxes1.size(0), "), got ", boxes2.sizes());
  TORCH_CHECK(boxes1.scalar_type() == at::kFloat, "boxes1 must be float32, got ", boxes1.scalar_type());
  TORCH_CHECK(boxes2.scalar_type() == at::kFloat, "boxes2 must be float32, got ", boxes2.scalar_type());
  TORCH_CHECK(boxes1.device() == boxes2.device(), "boxes2 must be on ", boxes1.device(), ", got ",
              boxes2.device());
}

// Checks shapes, dtypes, devices, level_sizes and topk; returns the level table, int64 [L, 4]
// on the CPU with start and size filled (width and is_grid zero: the backends detect them).
inline at::Tensor check_assign_args(const at::Tensor& anchors, const at::Tensor& valid,
                                    at::IntArrayRef level_sizes, const at::Tensor& gt_boxes,
                                    const at::Tensor& num_gt, int64_t topk) {
  check_boxes(anchors, "anchors", 2, "[N, 4]");
  check_boxes(gt_boxes, "gt_boxes", 3, "[B, M, 4]");
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == gt_boxes.size(0) && valid.size(1) == anchors.size(0),
              "valid must be [B, N] = [", gt_boxes.size(0), ", ", anchors.size(0), "], got ", valid.sizes());
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool, got ", valid.scalar_type());
  TORCH_CHECK(num_gt.dim() == 1 && num_gt.size(0) == gt_boxes.size(0),
              "num_gt must be [B] = [", gt_boxes.size(0), "], got ", num_gt.sizes());
  TORCH_CHECK(num_gt.scalar_type() == at::kLong, "num_gt must be int64, got ", num_gt.scalar_type());
  const auto device = gt_boxes.device();
  TORCH_CHECK(anchors.device() == device, "anchors must be on ", device, " like gt_boxes, got ", anchors.device());
  TORCH_CHECK(valid.device() == device, "valid must be on ", device, " like gt_boxes, got ", valid.device());
  TORCH_CHECK(num_gt.device() == device, "num_gt must be on ", device, " like gt_boxes, got ", num_gt.device());
  TORCH_CHECK(topk >= 1 && topk <= kMaxTopk, "topk must be in [1, ", kMaxTopk, "], got ", topk);
  TORCH_CHECK(!level_sizes.empty(), "level_sizes must name at least one level, got []");
  TORCH_CHECK(gt_boxes.size(1) < (int64_t{1} << 31), "gt_boxes: at most 2^31 - 1 GTs per image, got ",
              gt_boxes.size(1));
  at::Tensor levels = at::zeros({static_cast<int64_t>(level_sizes.size()), kLevelFieldsCount}, at::kLong);
  auto* lv = levels.data_ptr<int64_t>();
  int64_t start = 0;
  for (size_t l = 0; l < level_sizes.size(); ++l) {
    TORCH_CHECK(level_sizes[l] >= 0, "level_sizes must be >= 0, got ", level_sizes);
    lv[l * kLevelFieldsCount + 0] = start;
    lv[l * kLevelFieldsCount + 1] = level_sizes[l];
    start += level_sizes[l];
  }
  TORCH_CHECK(start == anchors.size(0), "level_sizes must sum to the number of anchors N=", anchors.size(0),
              ", got ", level_sizes, " (sum ", start, ")");
  return levels;
}

// The optional geometry of atss_assign and topk_candidates (ops.GridGeometry): per level the
// grid (H, W) and stride, per image the valid extent (pad_h, pad_w). All or none.
struct Geometry {
  std::vector<int64_t> height, width, stride;
  at::Tensor extent;  // int64 [B, 2], contiguous, on the inputs' device
};

// Checks the geometry arguments against the level table of check_assign_args (shapes only:
// whether the anchors and valid flags keep the promise is the Python layer's validate=True).
inline std::optional<Geometry> check_geometry_args(const at::Tensor& levels, const at::Tensor& gt_boxes,
                                                   at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                   const std::optional<at::Tensor>& extent) {
  const bool any = grid_hw.has_value() || strides.has_value() || extent.has_value();
  if (!any) return std::nullopt;
  TORCH_CHECK(grid_hw.has_value() && strides.has_value() && extent.has_value(),
              "geometry: grid_hw, strides and extent must be given together, got grid_hw ",
              grid_hw.has_value() ? "set" : "None", ", strides ", strides.has_value() ? "set" : "None", ", extent ",
              extent.has_value() ? "set" : "None");
  const int64_t num_levels = levels.size(0);
  const auto hw = *grid_hw;
  const auto st = *strides;
  TORCH_CHECK(static_cast<int64_t>(hw.size()) == 2 * num_levels, "grid_hw must hold (H, W) of each of the ",
              num_levels, " levels, got ", hw);
  TORCH_CHECK(static_cast<int64_t>(st.size()) == num_levels, "strides must hold one stride per level (",
              num_levels, "), got ", st);
  Geometry g;
  const auto* lv = levels.data_ptr<int64_t>();
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t h = hw[2 * l], w = hw[2 * l + 1], size = lv[l * kLevelFieldsCount + kSize];
    TORCH_CHECK(h >= 0 && w >= 0 && h * w == size, "grid_hw: level ", l, " must have H * W = level size ", size,
                ", got (", h, ", ", w, ")");
    TORCH_CHECK(st[l] >= 1, "strides must be >= 1, got ", st);
    g.height.push_back(h);
    g.width.push_back(w);
    g.stride.push_back(st[l]);
  }
  const at::Tensor& e = *extent;
  TORCH_CHECK(e.dim() == 2 && e.size(0) == gt_boxes.size(0) && e.size(1) == 2, "extent must be [B, 2] = [",
              gt_boxes.size(0), ", 2], got ", e.sizes());
  TORCH_CHECK(e.scalar_type() == at::kLong, "extent must be int64, got ", e.scalar_type());
  TORCH_CHECK(e.device() == gt_boxes.device(), "extent must be on ", gt_boxes.device(), " like gt_boxes, got ",
              e.device());
  g.extent = e.contiguous();
  return g;
}

}  // namespace atss
