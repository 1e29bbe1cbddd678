// The CPU harness of the CUDA kernels: runs every block and thread of the launches the CUDA
// launchers make (csrc/*/*_cuda.cu, common/pass_cuda.cu), with the same kernel bodies and
// launch configurations, on the CPU (harness/host_coop.h), and writes what they computed.
// No torch: tests/test_kernel_harness.py builds it with AddressSanitizer and UBSan, feeds it
// scenes and compares the outputs with the CPU kernels, bit for bit.
//
//   harness SCENE OUT SEED
// SCENE: int64 header {magic, B, M, N, L, topk, has_geometry, n1, m1}, then int64
// level_sizes[L], float anchors[N*4], uint8 valid[B*N], float gt_boxes[B*M*4], int64
// num_gt[B], with geometry int64 grid_hw[2L], strides[L], extent[B*2], then the box_iou
// inputs float boxes1[B*n1*4], boxes2[B*m1*4].
// OUT, in order: float iou[B*n1*m1]; int64 table[L*4], counts[B*L] (the prepare kernel);
// int64 cand[B*M*L*topk], assigned[B*N], float iou[B*N] (without geometry); with geometry
// the same three again. Every buffer is allocated at exactly its size.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "box_iou/box_iou_kernel.h"
#include "common/gt_pass.h"
#include "common/levels_kernel.h"
#include "harness/host_coop.h"

namespace {

using atss::harness::Rng;

constexpr int64_t kMagic = 0x41545353484e5331;  // "ATSSHNS1"

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "harness: %s\n", what.c_str());
  std::exit(2);
}

template <typename T>
std::unique_ptr<T[]> alloc(int64_t count) {
  if (count < 0) die("negative size");
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(count)]);
}

struct Reader {
  FILE* f;
  template <typename T>
  std::unique_ptr<T[]> read(int64_t count) {
    auto p = alloc<T>(count);
    if (count && std::fread(p.get(), sizeof(T), static_cast<size_t>(count), f) != static_cast<size_t>(count))
      die("scene file too short");
    return p;
  }
};

struct Writer {
  FILE* f;
  template <typename T>
  void write(const T* p, int64_t count) {
    if (count && std::fwrite(p, sizeof(T), static_cast<size_t>(count), f) != static_cast<size_t>(count))
      die("cannot write the output");
  }
};

struct Scene {
  int64_t b, m, n, l, topk, has_geometry, n1, m1;
  std::unique_ptr<int64_t[]> level_sizes, grid_hw, strides, extent, num_gt;
  std::unique_ptr<float[]> anchors, gt_boxes, boxes1, boxes2;
  std::unique_ptr<bool[]> valid;
};

Scene read_scene(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) die(std::string("cannot open ") + path);
  Reader r{f};
  auto header = r.read<int64_t>(9);
  if (header[0] != kMagic) die("not a scene file");
  Scene s;
  s.b = header[1];
  s.m = header[2];
  s.n = header[3];
  s.l = header[4];
  s.topk = header[5];
  s.has_geometry = header[6];
  s.n1 = header[7];
  s.m1 = header[8];
  if (s.l < 1 || s.l > atss::kMaxKernelLevels) die("bad number of levels");
  s.level_sizes = r.read<int64_t>(s.l);
  s.anchors = r.read<float>(s.n * 4);
  auto valid = r.read<uint8_t>(s.b * s.n);
  s.valid = alloc<bool>(s.b * s.n);
  for (int64_t i = 0; i < s.b * s.n; ++i) s.valid[i] = valid[i] != 0;
  s.gt_boxes = r.read<float>(s.b * s.m * 4);
  s.num_gt = r.read<int64_t>(s.b);
  if (s.has_geometry) {
    s.grid_hw = r.read<int64_t>(2 * s.l);
    s.strides = r.read<int64_t>(s.l);
    s.extent = r.read<int64_t>(s.b * 2);
  }
  s.boxes1 = r.read<float>(s.b * s.n1 * 4);
  s.boxes2 = r.read<float>(s.b * s.m1 * 4);
  std::fclose(f);
  return s;
}

// The arguments pass_args_cuda builds (common/pass_cuda.cu), without the output.
atss::PassArgs pass_args(const Scene& s, const int64_t* table, const int64_t* counts, bool geometry) {
  atss::PassArgs a{};
  a.anchors = s.anchors.get();
  a.valid = s.valid.get();
  a.gt_boxes = s.gt_boxes.get();
  a.num_gt = s.num_gt.get();
  a.b = s.b;
  a.m = s.m;
  a.n = s.n;
  a.num_levels = static_cast<int>(s.l);
  a.topk = static_cast<int>(s.topk);
  int64_t start = 0;
  for (int64_t l = 0; l < s.l; ++l) {
    a.levels.start[l] = start;
    a.levels.size[l] = s.level_sizes[l];
    start += s.level_sizes[l];
  }
  if (geometry) {
    for (int64_t l = 0; l < s.l; ++l) {
      a.levels.height[l] = s.grid_hw[2 * l];
      a.levels.width[l] = s.grid_hw[2 * l + 1];
      a.levels.stride[l] = s.strides[l];
    }
    a.extent = s.extent.get();
  } else {
    a.table = table;
    a.counts = counts;
  }
  return a;
}

void run_pass(const atss::PassArgs& a, Rng& rng) {
  atss::harness::run_blocks(atss::gt_pass_launch(a.b, a.m, a.num_levels, a.topk), rng,
                            [&](atss::harness::HostBlock& blk, int64_t block, unsigned char* smem) {
                              atss::gt_pass_block(blk, block, a, smem);
                            });
}

// topk_candidates_cuda and atss_assign_cuda, launch by launch.
void run_ops(const Scene& s, const int64_t* table, const int64_t* counts, bool geometry, Rng& rng, Writer& w) {
  const int64_t slots = s.l * s.topk;
  auto cand = alloc<int64_t>(s.b * s.m * slots);
  if (s.b * s.m * slots > 0) {
    atss::PassArgs a = pass_args(s, table, counts, geometry);
    a.cand_out = cand.get();
    run_pass(a, rng);
  }
  w.write(cand.get(), s.b * s.m * slots);

  auto assigned = alloc<int64_t>(s.b * s.n);  // at::zeros: the claims
  auto iou = alloc<float>(s.b * s.n);
  std::memset(assigned.get(), 0, sizeof(int64_t) * static_cast<size_t>(s.b * s.n));
  if (s.b * s.n > 0) {
    auto* keys = reinterpret_cast<uint64_t*>(assigned.get());
    if (s.m > 0) {
      atss::PassArgs a = pass_args(s, table, counts, geometry);
      a.keys = keys;
      run_pass(a, rng);
    }
    const int64_t total = s.b * s.n;
    atss::harness::run_threads(atss::decode_launch(total), rng, [&](int64_t block, int thread) {
      atss::decode_thread(block, thread, s.valid.get(), keys, total, assigned.get(), iou.get());
    });
  }
  w.write(assigned.get(), s.b * s.n);
  w.write(iou.get(), s.b * s.n);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) die("usage: harness SCENE OUT SEED");
  const Scene s = read_scene(argv[1]);
  Rng rng{std::strtoull(argv[3], nullptr, 10)};
  FILE* f = std::fopen(argv[2], "wb");
  if (!f) die(std::string("cannot open ") + argv[2]);
  Writer w{f};

  // box_iou_cuda, batched: [B, n1, 4] x [B, m1, 4].
  const int64_t total = s.b * s.n1 * s.m1;
  auto pair_iou = alloc<float>(total);
  if (total > 0) {
    atss::harness::run_threads(atss::box_iou_launch(total), rng, [&](int64_t block, int thread) {
      atss::box_iou_thread(block, thread, s.boxes1.get(), s.boxes2.get(), s.n1, s.m1, total, pair_iou.get());
    });
  }
  w.write(pair_iou.get(), total);

  // The prepare kernel (pass_args_cuda without geometry).
  auto table = alloc<int64_t>(s.l * atss::kLevelFieldsCount);
  auto counts = alloc<int64_t>(s.b * s.l);
  atss::PrepareArgs p{};
  p.anchors = s.anchors.get();
  p.valid = s.valid.get();
  p.b = s.b;
  p.n = s.n;
  p.num_levels = static_cast<int>(s.l);
  int64_t start = 0;
  for (int64_t l = 0; l < s.l; ++l) {
    p.start[l] = start;
    p.size[l] = s.level_sizes[l];
    start += s.level_sizes[l];
  }
  p.table = table.get();
  p.counts = counts.get();
  atss::harness::run_blocks(atss::prepare_launch(s.b, p.num_levels), rng,
                            [&](atss::harness::HostBlock& blk, int64_t block, unsigned char* smem) {
                              atss::prepare_block(blk, block, p, smem);
                            });
  w.write(table.get(), s.l * atss::kLevelFieldsCount);
  w.write(counts.get(), s.b * s.l);

  run_ops(s, table.get(), counts.get(), false, rng, w);
  if (s.has_geometry) run_ops(s, nullptr, nullptr, true, rng, w);
  std::fclose(f);
  return 0;
}
