// The candidate search and the per-GT threshold of ATSS (SPEC.md section 2, steps 2-5), as
// functions one thread runs. Shared by the CPU and the CUDA kernels (see atss_math.h).
//
// Levels are described by 4 int64 each (a row of an int64 [L, 4] tensor):
//   [0] start: the level's first anchor index into N;   [1] size: its number of anchors;
//   [2] width: anchors per row when it is a grid;        [3] is_grid: 1 when the level is one.
// A level is a grid when its anchor centres satisfy, with W its width and H = size / W:
//   centre of anchor (x, y) = (colx[x], rowy[y]) exactly (bit-equal float32), where
//   colx[x] = centre_x(anchor x of row 0) and rowy[y] = centre_y(anchor 0 of row y),
//   both strictly increasing; anchor (x, y) has index start + y * W + x.
// The model's anchors always are (one square anchor per location, row-major, x fastest). On a
// grid the distance of anchor (x, y) is monotone in |colx[x] - gx| and |rowy[y] - gy|, so the
// k nearest lie in a window around the GT centre: the window grows until its k-th distance is
// strictly below a lower bound on every anchor outside it (which holds with any valid mask).
// Other levels get an exhaustive scan. Both give exactly the k nearest valid anchors, ties
// to the lower index.
#pragma once

#include "common/atss_math.h"

namespace atss {

enum LevelField { kStart = 0, kSize = 1, kWidth = 2, kIsGrid = 3 };
constexpr int64_t kLevelFieldsCount = 4;  // int64 values per level in the level table

ATSS_HD float anchor_cx(const float* anchors, int64_t i) { return centre_x(anchors + 4 * i); }
ATSS_HD float anchor_cy(const float* anchors, int64_t i) { return centre_y(anchors + 4 * i); }

// Grid width candidate of a level: the index of the first anchor whose centre y differs from
// the first anchor's (or the level size when none does). Sequential; the CUDA detection does
// the same in parallel.
inline int64_t grid_width_seq(const float* anchors, int64_t start, int64_t size) {
  const float cy0 = anchor_cy(anchors, start);
  for (int64_t i = 1; i < size; ++i)
    if (!(anchor_cy(anchors, start + i) == cy0)) return i;
  return size;
}

// Whether anchor i (0-based inside the level) sits on the grid of width w: its centre equals
// its column's and its row's, and the row-0 / column-0 centres increase strictly.
ATSS_HD bool on_grid(const float* anchors, int64_t start, int64_t w, int64_t i) {
  const int64_t x = i % w, y = i / w;
  const float cx = anchor_cx(anchors, start + i), cy = anchor_cy(anchors, start + i);
  if (!(cx == anchor_cx(anchors, start + x)) || !(cy == anchor_cy(anchors, start + y * w))) return false;
  if (y == 0 && x > 0 && !(anchor_cx(anchors, start + x - 1) < cx)) return false;
  if (x == 0 && y > 0 && !(anchor_cy(anchors, start + (y - 1) * w) < cy)) return false;
  return true;
}

// Number of columns x in [0, w) whose centre colx[x] <= g (binary search; colx increases).
ATSS_HD int64_t count_cols_le(const float* anchors, int64_t start, int64_t w, float g) {
  int64_t lo = 0, hi = w;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (anchor_cx(anchors, start + mid) <= g) lo = mid + 1; else hi = mid;
  }
  return lo;
}

ATSS_HD int64_t count_rows_le(const float* anchors, int64_t start, int64_t w, int64_t h, float g) {
  int64_t lo = 0, hi = h;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (anchor_cy(anchors, start + mid * w) <= g) lo = mid + 1; else hi = mid;
  }
  return lo;
}

ATSS_HD int64_t max_i(int64_t a, int64_t b) { return a > b ? a : b; }
ATSS_HD int64_t min_i(int64_t a, int64_t b) { return a < b ? a : b; }

ATSS_HD void push_anchor(const float* anchors, const bool* valid, int64_t i, float gx, float gy, TopK& top) {
  if (valid[i]) top.push(centre_distance(anchor_cx(anchors, i), anchor_cy(anchors, i), gx, gy), i);
}

// The growing window of the grid search (see the file comment): where it starts, how it
// grows, and the lower bound on the distance of every anchor outside it. The sequential search
// below and the team search (common/gt_pass.h) walk the same windows.
struct GridWindow {
  const float* anchors;
  int64_t start, w, h;
  int64_t c, r;          // the window's centre column and row
  float dx_min, dy_min;  // smallest |dx| over all columns, |dy| over all rows
  int64_t rad;
  int64_t x0, x1, y0, y1;      // the window now
  int64_t ox0, ox1, oy0, oy1;  // the window scanned before it (empty at first)

  ATSS_HD float colx(int64_t x) const { return anchor_cx(anchors, start + x); }
  ATSS_HD float rowy(int64_t y) const { return anchor_cy(anchors, start + y * w); }

  ATSS_HD void init(const float* anchors_, const int64_t* level, float gx, float gy, int k) {
    anchors = anchors_;
    start = level[kStart];
    w = level[kWidth];
    h = level[kSize] / level[kWidth];
    const int64_t p = count_cols_le(anchors, start, w, gx);  // colx[p-1] <= gx < colx[p]
    const int64_t q = count_rows_le(anchors, start, w, h, gy);
    // Window centre: the nearer of the two columns (rows) around the GT centre.
    c = (p == w || (p > 0 && gx - colx(p - 1) <= colx(p) - gx)) ? p - 1 : p;
    r = (q == h || (q > 0 && gy - rowy(q - 1) <= rowy(q) - gy)) ? q - 1 : q;
    // Smallest |dx| over all columns and |dy| over all rows (at p-1 / p, q-1 / q): bounds for strips.
    dx_min = INFINITY;
    dy_min = INFINITY;
    if (p > 0) dx_min = min_f(dx_min, fabsf(colx(p - 1) - gx));
    if (p < w) dx_min = min_f(dx_min, fabsf(colx(p) - gx));
    if (q > 0) dy_min = min_f(dy_min, fabsf(rowy(q - 1) - gy));
    if (q < h) dy_min = min_f(dy_min, fabsf(rowy(q) - gy));
    int64_t s = 0;  // integer square root of k: the starting radius covers about (2 + sqrt(k))^2 anchors
    while ((s + 1) * (s + 1) <= k) ++s;
    rad = 1 + s / 2;
    ox0 = 0; ox1 = -1; oy0 = 0; oy1 = -1;
    place();
  }
  ATSS_HD void place() {
    x0 = max_i(c - rad, 0); x1 = min_i(c + rad, w - 1);
    y0 = max_i(r - rad, 0); y1 = min_i(r + rad, h - 1);
  }
  // Whether cell (x, y) of the window now was in the window scanned before.
  ATSS_HD bool scanned(int64_t x, int64_t y) const { return y >= oy0 && y <= oy1 && x >= ox0 && x <= ox1; }
  ATSS_HD bool whole() const { return x0 == 0 && x1 == w - 1 && y0 == 0 && y1 == h - 1; }
  // Every anchor outside the window is in a strip beyond one of its sides; its distance is at
  // least that side's bound (monotonicity), so the smallest bounds them all.
  ATSS_HD float bound(float gx, float gy) const {
    float b = INFINITY;
    if (x0 > 0) b = min_f(b, hypot_f(colx(x0 - 1) - gx, dy_min));
    if (x1 < w - 1) b = min_f(b, hypot_f(colx(x1 + 1) - gx, dy_min));
    if (y0 > 0) b = min_f(b, hypot_f(dx_min, rowy(y0 - 1) - gy));
    if (y1 < h - 1) b = min_f(b, hypot_f(dx_min, rowy(y1 + 1) - gy));
    return b;
  }
  ATSS_HD void grow() {
    ox0 = x0; ox1 = x1; oy0 = y0; oy1 = y1;
    rad += 1 + rad / 2;
    place();
  }
};

// The k nearest valid anchors of a grid level by a growing window (see the file comment).
ATSS_HD void grid_search(const float* anchors, const bool* valid, const int64_t* level, float gx,
                         float gy, TopK& top) {
  GridWindow win;
  win.init(anchors, level, gx, gy, top.k);
  while (true) {
    for (int64_t y = win.y0; y <= win.y1; ++y) {
      const int64_t row = win.start + y * win.w;
      if (y >= win.oy0 && y <= win.oy1) {  // a row of the old window: only its new columns
        for (int64_t x = win.x0; x < win.ox0; ++x) push_anchor(anchors, valid, row + x, gx, gy, top);
        for (int64_t x = win.ox1 + 1; x <= win.x1; ++x) push_anchor(anchors, valid, row + x, gx, gy, top);
      } else {
        for (int64_t x = win.x0; x <= win.x1; ++x) push_anchor(anchors, valid, row + x, gx, gy, top);
      }
    }
    if (win.whole()) return;  // the whole level
    // Strictly: an outside tie could have a lower index.
    if (top.full() && win.bound(gx, gy) > top.worst()) return;
    win.grow();
  }
}

// Step 3 for one (image, GT, level): the k nearest valid anchors of the level to (gx, gy),
// written to out[0..k) as anchor indices into N, nearest first (ties: lower index), then -1
// up to out[topk). `k` is min(topk, valid anchors of the level in this image).
ATSS_HD void level_candidates(const float* anchors, const bool* valid, const int64_t* level, int k,
                              int topk, float gx, float gy, TopK& top, int64_t* out) {
  top.reset(k);
  if (k > 0) {
    if (level[kIsGrid]) {
      grid_search(anchors, valid, level, gx, gy, top);
    } else {
      const int64_t end = level[kStart] + level[kSize];
      for (int64_t i = level[kStart]; i < end; ++i) push_anchor(anchors, valid, i, gx, gy, top);
    }
  }
  for (int j = 0; j < topk; ++j) out[j] = j < top.n ? top.index[j] : -1;
}

// Step 4: threshold = mean + unbiased std of the candidates' IoUs, accumulated in double in
// candidate order, rounded to float. `cand` holds `slots` entries, -1 for none; iou_at(j) is
// the IoU of slot j (box_iou of its anchor and the GT: the CPU kernel reads it from an array
// it filled once, a CUDA thread recomputes it; the same float either way). Returns the number
// of candidates in *count; the threshold is meaningful only for count >= 2.
template <typename IouAt>
ATSS_HD float gt_threshold(const int64_t* cand, int slots, IouAt iou_at, int* count) {
  int n = 0;
  double sum = 0.0;
  for (int j = 0; j < slots; ++j) {
    if (cand[j] < 0) continue;
    sum += static_cast<double>(iou_at(j));
    ++n;
  }
  *count = n;
  if (n < 2) return 0.0f;
  const double mean = sum / n;
  double ss = 0.0;
  for (int j = 0; j < slots; ++j) {
    if (cand[j] < 0) continue;
    const double d = static_cast<double>(iou_at(j)) - mean;
    ss += d * d;
  }
  return static_cast<float>(mean + sqrt(ss / (n - 1)));
}

// Step 5 for one candidate i with IoU `iou`: positive iff IoU >= threshold and the anchor's
// centre is inside the GT by more than the margin.
ATSS_HD bool is_positive(const float* anchors, int64_t i, const float* gt, float thr, float iou) {
  return iou >= thr && centre_inside(anchor_cx(anchors, i), anchor_cy(anchors, i), gt);
}

}  // namespace atss
