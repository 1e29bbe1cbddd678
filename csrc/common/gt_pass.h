// The one-pass kernel body of atss_assign and topk_candidates on CUDA, and its launch
// configuration: one block per (image, GT), one team (warp) per level.
//
// A team finds a level's k nearest valid anchors (atss_candidates.h) in parallel: each lane
// scans its share of the window's new cells (or of the level, when it is no grid) into its own
// TopK; then k rounds of a team arg-min over the lanes' heads, in (distance, index) order, give
// the level's k nearest, nearest first: exactly what the sequential search returns (the k
// nearest of a set under a strict total order do not depend on who saw which). The window's
// stop test uses the merged k-th distance, so the team walks the sequential search's windows.
// Candidates and their IoUs go to shared memory once; one thread computes the threshold as
// gt_threshold does (double, candidate order: the CPU's bits); the threads then claim the
// positives with the 64-bit atomic maximum of atss::pack_claim.
// Candidates-only mode (topk_candidates) writes the candidates to global memory instead.
//
// The level table and the valid counts come either from device memory (filled by the
// prepare kernels of levels_kernel.h) or, with geometry, from kernel arguments: each level a
// grid of H x W, valid count of (b, l) = min(ceil(pad_h / s), H) * min(ceil(pad_w / s), W).
#pragma once

#include "common/atss_candidates.h"
#include "common/coop.h"

namespace atss {

constexpr int kMaxTeams = 8;  // teams per block (levels beyond take turns)

struct PassLevels {
  int64_t start[kMaxKernelLevels];
  int64_t size[kMaxKernelLevels];
  int64_t height[kMaxKernelLevels];  // with geometry only
  int64_t width[kMaxKernelLevels];   // with geometry only
  int64_t stride[kMaxKernelLevels];  // with geometry only
};

struct PassArgs {
  const float* anchors;   // [N, 4]
  const bool* valid;      // [B, N]
  const float* gt_boxes;  // [B, M, 4]
  const int64_t* num_gt;  // [B]
  int64_t b, m, n;
  int num_levels, topk;
  const int64_t* table;   // [L, 4] level table, or null: geometry (levels + extent)
  const int64_t* counts;  // [B, L] valid counts, or null: geometry
  const int64_t* extent;  // [B, 2] (pad_h, pad_w), with geometry
  PassLevels levels;
  uint64_t* keys;         // assign mode: claims [B, N], zeroed before the launch
  int64_t* cand_out;      // candidates mode: [B, M, L * topk]; null in assign mode
};

// Shared memory of a block: per team two exchange rows of kLanes keys, then the candidates,
// their IoUs, and the threshold with the candidate count.
struct PassLayout {
  int teams;
  int64_t xchg, cand, iou, thr, count, bytes;
};

ATSS_HD PassLayout pass_layout(int num_levels, int topk) {
  PassLayout p;
  p.teams = num_levels < kMaxTeams ? num_levels : kMaxTeams;
  const int64_t slots = static_cast<int64_t>(num_levels) * topk;
  p.xchg = 0;
  p.cand = align8(p.xchg + static_cast<int64_t>(p.teams) * 2 * kLanes * 8);
  p.iou = align8(p.cand + slots * 8);
  p.thr = align8(p.iou + slots * 4);
  p.count = p.thr + 4;
  p.bytes = p.count + 4;
  return p;
}

ATSS_HD Launch gt_pass_launch(int64_t b, int64_t m, int num_levels, int topk) {
  const PassLayout p = pass_layout(num_levels, topk);
  return {b * m, p.teams * kLanes, p.bytes};
}

// Row l of the level table (start, size, width, is_grid).
ATSS_HD void pass_level_row(const PassArgs& a, int l, int64_t* row) {
  if (a.table != nullptr) {
    for (int f = 0; f < kLevelFieldsCount; ++f) row[f] = a.table[l * kLevelFieldsCount + f];
  } else {
    row[kStart] = a.levels.start[l];
    row[kSize] = a.levels.size[l];
    row[kWidth] = a.levels.width[l];
    row[kIsGrid] = 1;
  }
}

// Cells of a valid extent `e` pixels long on a level of `cells` cells of `stride` pixels:
// min(ceil(e / stride), cells), 0 for e <= 0 (unchecked input cannot overflow).
ATSS_HD int64_t valid_cells(int64_t e, int64_t stride, int64_t cells) {
  if (e <= 0) return 0;
  if (e >= cells * stride) return cells;
  return ceil_div(e, stride);
}

ATSS_HD int64_t pass_valid_count(const PassArgs& a, int64_t b, int l) {
  if (a.counts != nullptr) return a.counts[b * a.num_levels + l];
  const int64_t s = a.levels.stride[l];
  return valid_cells(a.extent[2 * b], s, a.levels.height[l]) * valid_cells(a.extent[2 * b + 1], s, a.levels.width[l]);
}

// (distance, index) as one key whose unsigned order is `nearer` (distances >= 0, not NaN;
// anchor indices < 2^31); kNoKey sorts after every key.
constexpr uint64_t kNoKey = ~uint64_t{0};
ATSS_HD uint64_t near_key(float d, int64_t i) {
  return (static_cast<uint64_t>(float_bits(d)) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(i));
}
ATSS_HD int64_t near_key_index(uint64_t key) { return static_cast<int64_t>(key & 0xFFFFFFFFu); }
ATSS_HD float near_key_dist(uint64_t key) { return bits_float(static_cast<uint32_t>(key >> 32)); }

ATSS_HD uint64_t head_key(const TopK& t, int h) { return h < t.n ? near_key(t.dist[h], t.index[h]) : kNoKey; }

// The team's k nearest so far: k rounds of an arg-min over the lanes' heads, written to
// out[0..merged), nearest first. Returns `merged` (k unless fewer were seen) and the last key
// in *last. xchg: 2 * kLanes keys of shared memory (rounds alternate rows, so a lane never
// overwrites a row another lane may still be reading).
template <typename Team>
ATSS_HD int team_merge(Team& team, PerLane<TopK>& top, PerLane<int>& head, int k, uint64_t* xchg,
                       int64_t* out, uint64_t* last) {
  uint64_t prev = kNoKey;
  int merged = 0;
  while (merged < k) {
    uint64_t* row = xchg + (merged & 1) * kLanes;
    team.each([&](int lane) {
      int& h = head[lane];
      if (merged == 0) {
        h = 0;
      } else {
        if (head_key(top[lane], h) == prev) ++h;  // this lane's head won the last round
        if (lane == 0) out[merged - 1] = near_key_index(prev);
      }
      row[lane] = head_key(top[lane], h);
    });
    team.sync();
    uint64_t best = kNoKey;
    for (int l = 0; l < kLanes; ++l) best = row[l] < best ? row[l] : best;
    if (best == kNoKey) break;
    prev = best;
    ++merged;
  }
  team.each([&](int lane) {
    if (lane == 0 && merged > 0) out[merged - 1] = near_key_index(prev);
  });
  team.sync();  // the rows are read: the next merge may write them
  *last = prev;
  return merged;
}

// level_candidates of atss_candidates.h by a team: the same out[0..topk).
template <typename Team>
ATSS_HD void team_level_candidates(Team& team, const float* anchors, const bool* valid, const int64_t* level,
                                   int k, int topk, float gx, float gy, uint64_t* xchg, int64_t* out) {
  PerLane<TopK> top;
  PerLane<int> head;
  team.each([&](int lane) { top[lane].reset(k); });
  int merged = 0;
  uint64_t last = kNoKey;
  if (k > 0 && level[kIsGrid]) {
    GridWindow win;
    win.init(anchors, level, gx, gy, k);
    while (true) {
      // The window's new cells, row-major over the window, dealt to the lanes in turn.
      const int64_t ww = win.x1 - win.x0 + 1, cells = ww * (win.y1 - win.y0 + 1);
      team.each([&](int lane) {
        for (int64_t u = lane; u < cells; u += kLanes) {
          const int64_t x = win.x0 + u % ww, y = win.y0 + u / ww;
          if (!win.scanned(x, y)) push_anchor(anchors, valid, win.start + y * win.w + x, gx, gy, top[lane]);
        }
      });
      merged = team_merge(team, top, head, k, xchg, out, &last);
      if (win.whole()) break;
      // Strictly: an outside tie could have a lower index.
      if (merged == k && win.bound(gx, gy) > near_key_dist(last)) break;
      win.grow();
    }
  } else if (k > 0) {
    const int64_t begin = level[kStart], end = level[kStart] + level[kSize];
    team.each([&](int lane) {
      for (int64_t i = begin + lane; i < end; i += kLanes) push_anchor(anchors, valid, i, gx, gy, top[lane]);
    });
    merged = team_merge(team, top, head, k, xchg, out, &last);
  }
  team.each([&](int lane) {
    for (int j = merged + lane; j < topk; j += kLanes) out[j] = -1;
  });
}

// The block of (image, GT) `block` (see the file comment). smem: pass_layout(...).bytes.
template <typename Block>
ATSS_HD void gt_pass_block(Block& blk, int64_t block, const PassArgs& a, unsigned char* smem) {
  const PassLayout lay = pass_layout(a.num_levels, a.topk);
  uint64_t* xchg = reinterpret_cast<uint64_t*>(smem + lay.xchg);
  int64_t* cand = reinterpret_cast<int64_t*>(smem + lay.cand);
  float* ious = reinterpret_cast<float*>(smem + lay.iou);
  float* thr = reinterpret_cast<float*>(smem + lay.thr);
  int* count = reinterpret_cast<int*>(smem + lay.count);
  const int slots = a.num_levels * a.topk;
  const int64_t i = block / a.m, j = block % a.m;
  const int64_t ng = a.num_gt[i] < 0 ? 0 : (a.num_gt[i] > a.m ? a.m : a.num_gt[i]);
  int64_t* out = a.cand_out != nullptr ? a.cand_out + block * slots : cand;
  if (j >= ng) {  // a padding row: the whole block leaves (candidates: all -1)
    if (a.cand_out != nullptr) {
      blk.each([&](int t) {
        for (int s = t; s < slots; s += blk.size()) out[s] = -1;
      });
    }
    return;
  }
  const float* gt = a.gt_boxes + 4 * block;
  const float gx = centre_x(gt), gy = centre_y(gt);
  const bool* valid = a.valid + i * a.n;
  blk.teams(lay.teams, [&](auto& team, int t) {
    for (int l = t; l < a.num_levels; l += lay.teams) {
      int64_t row[kLevelFieldsCount];
      pass_level_row(a, l, row);
      const int64_t c = pass_valid_count(a, i, l);
      const int k = static_cast<int>(c < a.topk ? c : a.topk);
      team_level_candidates(team, a.anchors, valid, row, k, a.topk, gx, gy, xchg + 2 * kLanes * t,
                            out + static_cast<int64_t>(l) * a.topk);
    }
  });
  if (a.cand_out != nullptr) return;
  blk.sync();
  blk.each([&](int t) {
    for (int s = t; s < slots; s += blk.size()) ious[s] = cand[s] >= 0 ? box_iou(a.anchors + 4 * cand[s], gt) : 0.0f;
  });
  blk.sync();
  blk.each([&](int t) {
    if (t == 0) *thr = gt_threshold(cand, slots, [&](int s) { return ious[s]; }, count);
  });
  blk.sync();
  if (*count < 2) return;  // a single candidate: undefined std, no positive
  const float threshold = *thr;
  blk.each([&](int t) {
    for (int s = t; s < slots; s += blk.size()) {
      if (cand[s] >= 0 && is_positive(a.anchors, cand[s], gt, threshold, ious[s]))
        atomic_max_u64(a.keys + i * a.n + cand[s], pack_claim(ious[s], j));
    }
  });
}

// The last pass of atss_assign: claims decoded in place into GT indices (`keys` and
// `assigned` are the same memory: each thread reads its key, then overwrites it).
constexpr int kDecodeThreads = 256;

ATSS_HD Launch decode_launch(int64_t total) { return {ceil_div(total, kDecodeThreads), kDecodeThreads, 0}; }

ATSS_HD void decode_thread(int64_t block, int thread, const bool* valid, const uint64_t* keys, int64_t total,
                           int64_t* assigned, float* iou) {
  const int64_t t = block * kDecodeThreads + thread;
  if (t >= total) return;
  const uint64_t key = keys[t];
  assigned[t] = !valid[t] ? -2 : (key ? claim_gt(key) : -1);
  iou[t] = key ? claim_iou(key) : 0.0f;
}

}  // namespace atss
