// Per-thread arithmetic of the ATSS ops, shared by the CPU and the CUDA kernels.
//
// Every function here is `__host__ __device__` under nvcc and plain `inline` under a host
// compiler, so the CPU kernels run the very code a CUDA thread runs and the CPU tests cover
// it. For the two to agree bit for bit the CUDA side is compiled with -fmad=false and the
// host side with -ffp-contract=off (no fused multiply-adds), and only IEEE-exact operations
// are used (+, -, *, /, sqrt).
//
// Conventions (SPEC.md section 2): boxes are float32 (x1, y1, x2, y2), widths x2 - x1 (no +1).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define ATSS_HD __host__ __device__ __forceinline__
#else
#define ATSS_HD inline
#endif

namespace atss {

constexpr float kIouEps = 1e-6f;        // the union is clamped to at least this
constexpr float kCentreMargin = 0.01f;  // a positive's centre lies inside its GT by more than this
constexpr int kMaxTopk = 64;            // per-level candidates a thread keeps

ATSS_HD float max_f(float a, float b) { return a > b ? a : b; }
ATSS_HD float min_f(float a, float b) { return a < b ? a : b; }

// IoU of two boxes in MMDetection's order of operations:
// area = (x2 - x1) * (y2 - y1); lt = max, rb = min; wh = clamp(rb - lt, 0); overlap = w * h;
// union = max(area1 + area2 - overlap, 1e-6); iou = overlap / union.
ATSS_HD float box_iou(const float* a, const float* b) {
  const float area1 = (a[2] - a[0]) * (a[3] - a[1]);
  const float area2 = (b[2] - b[0]) * (b[3] - b[1]);
  const float w = max_f(min_f(a[2], b[2]) - max_f(a[0], b[0]), 0.0f);
  const float h = max_f(min_f(a[3], b[3]) - max_f(a[1], b[1]), 0.0f);
  const float overlap = w * h;
  const float uni = max_f(area1 + area2 - overlap, kIouEps);
  return overlap / uni;
}

ATSS_HD float centre_x(const float* box) { return (box[0] + box[2]) / 2.0f; }
ATSS_HD float centre_y(const float* box) { return (box[1] + box[3]) / 2.0f; }

// Euclidean distance from the components: sqrt(dx * dx + dy * dy), float32. Monotone in |dx|
// and in |dy| (each rounding step is), which the grid search's lower bounds rely on.
ATSS_HD float hypot_f(float dx, float dy) { return sqrtf(dx * dx + dy * dy); }

// Centre distance between anchor centre (ax, ay) and GT centre (gx, gy): anchor minus GT.
ATSS_HD float centre_distance(float ax, float ay, float gx, float gy) {
  return hypot_f(ax - gx, ay - gy);
}

// The order of candidates: nearer first; equal distances, the lower anchor index first.
ATSS_HD bool nearer(float d1, int64_t i1, float d2, int64_t i2) {
  return d1 < d2 || (d1 == d2 && i1 < i2);
}

// Whether an anchor centre lies inside the GT by more than the margin:
// min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01.
ATSS_HD bool centre_inside(float cx, float cy, const float* gt) {
  const float m = min_f(min_f(cx - gt[0], cy - gt[1]), min_f(gt[2] - cx, gt[3] - cy));
  return m > kCentreMargin;
}

// The k nearest (distance, index) pairs seen so far, ascending in `nearer` order.
struct TopK {
  float dist[kMaxTopk];
  int64_t index[kMaxTopk];
  int n;
  int k;

  ATSS_HD void reset(int k_) {
    n = 0;
    k = k_;
  }
  ATSS_HD bool full() const { return n == k; }
  ATSS_HD float worst() const { return dist[n - 1]; }
  ATSS_HD void push(float d, int64_t i) {
    if (k == 0 || (n == k && !nearer(d, i, dist[n - 1], index[n - 1]))) return;
    int j = n < k ? n++ : n - 1;
    while (j > 0 && nearer(d, i, dist[j - 1], index[j - 1])) {
      dist[j] = dist[j - 1];
      index[j] = index[j - 1];
      --j;
    }
    dist[j] = d;
    index[j] = i;
  }
};

ATSS_HD uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

ATSS_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// An anchor's claim by a GT as one 64-bit key whose unsigned maximum is the winner of step 6:
// high word = the IoU's float bits + 1 (IoU >= 0, so bit order is value order, and an IoU of
// exactly 0 still beats the empty key 0); low word = 0xFFFFFFFF - gt (a tie goes to the
// lower GT). The maximum does not depend on the order of the claims: CPU and CUDA agree.
ATSS_HD uint64_t pack_claim(float iou, int64_t gt) {
  if (iou == 0.0f) iou = 0.0f;  // -0.0 -> +0.0
  const uint64_t high = static_cast<uint64_t>(float_bits(iou) + 1u);
  const uint64_t low = static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(gt));
  return (high << 32) | low;
}

ATSS_HD int64_t claim_gt(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

ATSS_HD float claim_iou(uint64_t key) { return bits_float(static_cast<uint32_t>(key >> 32) - 1u); }

}  // namespace atss
