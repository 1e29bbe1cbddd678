// The prepare kernel of the CUDA ops without geometry, as a body of (block, thread): blocks
// [0, L) detect whether each level is a grid (common/atss_candidates.h) and fill its row of
// the level table; blocks [L, L + B * L) count the valid anchors of one (image, level).
// Both reduce across the block in barrier phases (common/coop.h): a tree of per-thread
// values in shared memory, no shared flag written by several threads.
#pragma once

#include "common/atss_candidates.h"
#include "common/coop.h"

namespace atss {

constexpr int kPrepareThreads = 256;  // a power of two: the tree reductions halve it

struct PrepareArgs {
  const float* anchors;  // [N, 4]
  const bool* valid;     // [B, N]
  int64_t b, n;
  int num_levels;
  int64_t start[kMaxKernelLevels];
  int64_t size[kMaxKernelLevels];
  int64_t* table;   // out: [L, 4]
  int64_t* counts;  // out: [B, L]
};

ATSS_HD Launch prepare_launch(int64_t b, int num_levels) {
  return {num_levels + b * num_levels, kPrepareThreads, kPrepareThreads * 8};
}

// In place: red[0] = the minimum (or the sum) of red[0 .. blk.size()), in log2 phases.
template <typename Block, typename T, typename Op>
ATSS_HD void block_reduce(Block& blk, T* red, Op op) {
  for (int s = blk.size() / 2; s > 0; s /= 2) {
    blk.each([&](int t) {
      if (t < s) red[t] = op(red[t], red[t + s]);
    });
    blk.sync();
  }
}

template <typename Block>
ATSS_HD void prepare_block(Block& blk, int64_t block, const PrepareArgs& a, unsigned char* smem) {
  int64_t* red = reinterpret_cast<int64_t*>(smem);
  const int threads = blk.size();
  if (block < a.num_levels) {
    const int l = static_cast<int>(block);
    const int64_t start = a.start[l], size = a.size[l];
    // The grid width: the first anchor whose centre y differs from the first anchor's.
    blk.each([&](int t) {
      int64_t w = size;
      if (size > 0) {
        const float cy0 = anchor_cy(a.anchors, start);
        for (int64_t i = 1 + t; i < size; i += threads) {
          if (!(anchor_cy(a.anchors, start + i) == cy0)) {
            w = i;
            break;  // later i of this thread are larger
          }
        }
      }
      red[t] = w;
    });
    blk.sync();
    block_reduce(blk, red, [](int64_t x, int64_t y) { return x < y ? x : y; });
    const int64_t w = red[0];
    blk.sync();  // every thread has read red[0] before it is reused
    blk.each([&](int t) {
      bool ok = size > 0 && size % w == 0;
      for (int64_t i = t; ok && i < size; i += threads) ok = on_grid(a.anchors, start, w, i);
      red[t] = ok ? 1 : 0;
    });
    blk.sync();
    block_reduce(blk, red, [](int64_t x, int64_t y) { return x < y ? x : y; });
    blk.each([&](int t) {
      if (t == 0) {
        int64_t* row = a.table + l * kLevelFieldsCount;
        row[kStart] = start;
        row[kSize] = size;
        row[kWidth] = w;
        row[kIsGrid] = red[0];
      }
    });
    return;
  }
  const int64_t task = block - a.num_levels, i = task / a.num_levels;
  const int l = static_cast<int>(task % a.num_levels);
  const bool* row = a.valid + i * a.n + a.start[l];
  const int64_t size = a.size[l];
  blk.each([&](int t) {
    int64_t c = 0;
    for (int64_t x = t; x < size; x += threads) c += row[x] ? 1 : 0;
    red[t] = c;
  });
  blk.sync();
  block_reduce(blk, red, [](int64_t x, int64_t y) { return x + y; });
  blk.each([&](int t) {
    if (t == 0) a.counts[task] = red[0];
  });
}

}  // namespace atss
