// CPU preparation shared by topk_candidates and atss_assign: grid detection per level and the
// valid anchors per (image, level).
#pragma once

#include <ATen/ops/zeros.h>
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/atss_candidates.h"

namespace atss {

// Work per task of the CPU kernels' at::parallel_for: a GT costs about a microsecond, an anchor
// of the final decoding pass a nanosecond. Small calls stay on one thread: waking the pool
// costs more than they do (and far more on a busy machine).
constexpr int64_t kGtGrain = 128;
constexpr int64_t kAnchorGrain = 1 << 18;

// Fills width and is_grid of each row of the level table (int64 [L, 4], CPU) from the anchors.
inline void detect_grids_cpu(const float* anchors, at::Tensor& levels) {
  auto* lv = levels.data_ptr<int64_t>();
  for (int64_t l = 0; l < levels.size(0); ++l) {
    int64_t* level = lv + l * kLevelFieldsCount;
    const int64_t start = level[kStart], size = level[kSize];
    level[kWidth] = 0;
    level[kIsGrid] = 0;
    if (size == 0) continue;
    const int64_t w = grid_width_seq(anchors, start, size);
    level[kWidth] = w;
    if (size % w != 0) continue;
    // The conditions of on_grid(), row by row against the row-0 centres (one sequential pass;
    // less than waking a thread pool would cost).
    const int64_t h = size / w;
    std::vector<float> colx(w);
    bool ok = true;
    for (int64_t x = 0; x < w && ok; ++x) {
      colx[x] = anchor_cx(anchors, start + x);
      ok = x == 0 || colx[x - 1] < colx[x];
    }
    float prev_y = 0.0f;
    for (int64_t y = 0; y < h && ok; ++y) {
      const float* row = anchors + 4 * (start + y * w);
      const float ry = centre_y(row);
      ok = y == 0 || prev_y < ry;
      prev_y = ry;
      for (int64_t x = 0; x < w && ok; ++x) ok = centre_x(row + 4 * x) == colx[x] && centre_y(row + 4 * x) == ry;
    }
    level[kIsGrid] = ok ? 1 : 0;
  }
}

// One GT's candidates on every level into out[L * topk] (nearest first, -1 padded): the step that
// topk_candidates and atss_assign share on the CPU.
inline void gt_candidates_cpu(const float* anchors, const bool* valid_img, const int64_t* levels,
                              const int64_t* counts_img, int64_t num_levels, int64_t topk, const float* gt,
                              TopK& top, int64_t* out) {
  const float gx = centre_x(gt), gy = centre_y(gt);
  for (int64_t l = 0; l < num_levels; ++l) {
    const int k = static_cast<int>(std::min<int64_t>(topk, counts_img[l]));
    level_candidates(anchors, valid_img, levels + l * kLevelFieldsCount, k, static_cast<int>(topk), gx, gy, top,
                     out + l * topk);
  }
}

// int64 [B, L]: valid anchors of each level in each image.
inline at::Tensor count_valid_cpu(const at::Tensor& valid, const at::Tensor& levels) {
  const int64_t b = valid.size(0), n = valid.size(1), num_levels = levels.size(0);
  at::Tensor counts = at::zeros({b, num_levels}, at::kLong);
  const bool* v = valid.data_ptr<bool>();
  const int64_t* lv = levels.data_ptr<int64_t>();
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t t = 0; t < b * num_levels; ++t) {  // sequential: one pass over B x N bytes
    const int64_t i = t / num_levels, l = t % num_levels;
    const bool* row = v + i * n + lv[l * kLevelFieldsCount + kStart];
    c[t] = std::count(row, row + lv[l * kLevelFieldsCount + kSize], true);
  }
  return counts;
}

}  // namespace atss
