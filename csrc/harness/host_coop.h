// The CPU emulation of common/coop.h for the kernel harness: a block runs each phase for
// every thread, a team for every lane, in a seeded shuffled order; sync() has nothing left
// to wait for. Phases that depend on the order of their threads (a race) give results that
// change with the seed, or read the memory pattern a region had before it was written.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "common/coop.h"

namespace atss::harness {

// splitmix64: fast, and plenty for shuffling.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

template <typename T>
void shuffle(Rng& rng, std::vector<T>& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

// A fresh random permutation of [0, n) in order[0, n).
inline void shuffled(Rng& rng, int* order, int n) {
  for (int i = 0; i < n; ++i) order[i] = i;
  for (int i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(static_cast<uint64_t>(i))]);
}

struct HostTeam {
  Rng* rng;
  int order[kLanes];
  template <typename F>
  void each(F&& f) {
    shuffled(*rng, order, kLanes);
    for (int lane : order) f(lane);
  }
  void sync() {}
};

struct HostBlock {
  int threads;
  Rng* rng;
  std::vector<int> order;
  HostBlock(int threads_, Rng* rng_) : threads(threads_), rng(rng_), order(threads_) {}
  int size() const { return threads; }
  template <typename F>
  void each(F&& f) {
    shuffled(*rng, order.data(), threads);
    for (int t : order) f(t);
  }
  void sync() {}
  // The teams one after another, in a shuffled order: between block syncs they share nothing
  // but disjoint regions of shared memory.
  template <typename F>
  void teams(int n, F&& f) {
    if (n * kLanes != threads) {
      std::fprintf(stderr, "teams(%d) in a block of %d threads\n", n, threads);
      std::abort();
    }
    std::vector<int> teams(n);
    shuffled(*rng, teams.data(), n);
    for (int i : teams) {
      HostTeam team{rng, {}};
      f(team, i);
    }
  }
};

// What a GPU would refuse to launch.
inline void check_launch(const Launch& launch) {
  if (launch.threads < 1 || launch.threads > 1024 || launch.smem < 0 || launch.smem > 48 * 1024 ||
      launch.blocks < 0 || launch.blocks >= (int64_t{1} << 31)) {
    std::fprintf(stderr, "bad launch: %lld blocks x %d threads, %lld bytes shared\n",
                 static_cast<long long>(launch.blocks), launch.threads, static_cast<long long>(launch.smem));
    std::abort();
  }
}

// Every block of a cooperative kernel, in a shuffled order, each with its own shared memory
// of exactly launch.smem bytes (a fresh allocation: AddressSanitizer sees any overrun),
// filled with a random byte so that reading it before writing shows.
template <typename Body>
void run_blocks(const Launch& launch, Rng& rng, Body body) {
  check_launch(launch);
  std::vector<int64_t> blocks(static_cast<size_t>(launch.blocks));
  for (int64_t b = 0; b < launch.blocks; ++b) blocks[b] = b;
  shuffle(rng, blocks);
  for (int64_t b : blocks) {
    unsigned char* smem = new unsigned char[static_cast<size_t>(launch.smem)];
    std::memset(smem, static_cast<int>(rng.next() & 0xFF), static_cast<size_t>(launch.smem));
    HostBlock blk(launch.threads, &rng);
    body(blk, b, smem);
    delete[] smem;
  }
}

// Every thread of a kernel without cooperation, blocks and threads in shuffled orders.
template <typename Body>
void run_threads(const Launch& launch, Rng& rng, Body body) {
  check_launch(launch);
  std::vector<int64_t> blocks(static_cast<size_t>(launch.blocks));
  for (int64_t b = 0; b < launch.blocks; ++b) blocks[b] = b;
  shuffle(rng, blocks);
  std::vector<int> threads(launch.threads);
  for (int64_t b : blocks) {
    shuffled(rng, threads.data(), launch.threads);
    for (int t : threads) body(b, t);
  }
}

}  // namespace atss::harness
