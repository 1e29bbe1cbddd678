// The CUDA box_iou kernel as a body of (block, thread), with its launch configuration: one
// thread per output element; the arithmetic is atss::box_iou, as on the CPU.
#pragma once

#include "common/atss_math.h"
#include "common/coop.h"

namespace atss {

constexpr int kBoxIouThreads = 256;

ATSS_HD Launch box_iou_launch(int64_t total) { return {ceil_div(total, kBoxIouThreads), kBoxIouThreads, 0}; }

// boxes1 [B * n, 4], boxes2 [B * m, 4], out [B * n * m]; total = B * n * m.
ATSS_HD void box_iou_thread(int64_t block, int thread, const float* boxes1, const float* boxes2, int64_t n,
                            int64_t m, int64_t total, float* out) {
  const int64_t t = block * kBoxIouThreads + thread;
  if (t >= total) return;
  const int64_t r = t / m, j = t % m;  // r = batch * n + row
  out[t] = box_iou(boxes1 + 4 * r, boxes2 + 4 * ((r / n) * m + j));
}

}  // namespace atss
