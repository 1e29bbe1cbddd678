// How the kernel bodies cooperate, written once for the GPU and for the CPU harness.
//
// A kernel body is a `__host__ __device__` template over its Block type, called with its
// block index; the threads of the block appear only inside `each` phases:
//   blk.each([&](int t) { ... });  // device: t = threadIdx.x; host: every t of the block,
//   blk.sync();                    //   in a seeded shuffled order. device: __syncthreads()
// Each `each` followed by `sync` is a barrier phase: a phase may read what earlier phases
// wrote to shared memory and writes only what no other thread of the same phase reads.
// A block is split into teams of kLanes (a warp on the GPU): blk.teams(n, f) runs f(team, i)
// for team i, and team.each / team.sync are the same phases among its lanes (__syncwarp).
// Lanes exchange values through shared memory written in one phase and read after the sync:
// each warp shuffle or vote is a barrier phase, so the CPU emulation checks it too.
// Code outside `each` (the "driver": uniform loop control) runs once on the host and
// redundantly in every thread on the device: it may read shared memory after a sync and
// global memory, and never writes either.
// Per-lane state that lives across phases: PerLane<T> (host: one T per lane; device: one T).
#pragma once

#include <cstdint>

#include "common/atss_math.h"

#ifndef __CUDA_ARCH__
#include <atomic>
#endif

namespace atss {

constexpr int kLanes = 32;           // lanes per team: a warp
constexpr int kMaxKernelLevels = 32;  // levels travel to the kernels in their arguments

template <typename T>
struct PerLane {
#ifdef __CUDA_ARCH__
  T value;
  __device__ __forceinline__ T& operator[](int) { return value; }
#else
  T value[kLanes];
  T& operator[](int lane) { return value[lane]; }
#endif
};

// The unsigned maximum of *slot and key, stored atomically (device: atomicMax; host: a
// compare-exchange loop through std::atomic_ref).
ATSS_HD void atomic_max_u64(uint64_t* slot, uint64_t key) {
#ifdef __CUDA_ARCH__
  atomicMax(reinterpret_cast<unsigned long long*>(slot), static_cast<unsigned long long>(key));
#elif defined(__cpp_lib_atomic_ref)
  std::atomic_ref<uint64_t> ref(*slot);
  uint64_t cur = ref.load(std::memory_order_relaxed);
  while (cur < key && !ref.compare_exchange_weak(cur, key, std::memory_order_relaxed)) {
  }
#else
  uint64_t cur = __atomic_load_n(slot, __ATOMIC_RELAXED);
  while (cur < key && !__atomic_compare_exchange_n(slot, &cur, key, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
#endif
}

// A launch configuration: what the CUDA launcher passes between <<< >>> and what the CPU
// harness runs (every block, every thread, `smem` bytes of shared memory per block).
struct Launch {
  int64_t blocks;
  int threads;
  int64_t smem;
};

ATSS_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Byte offsets into a block's shared memory, every region aligned to 8 bytes.
ATSS_HD int64_t align8(int64_t bytes) { return (bytes + 7) / 8 * 8; }

#ifdef __CUDACC__
struct DeviceTeam {
  template <typename F>
  __device__ __forceinline__ void each(F&& f) { f(static_cast<int>(threadIdx.x % kLanes)); }
  __device__ __forceinline__ void sync() { __syncwarp(); }
};

struct DeviceBlock {
  __device__ __forceinline__ int size() const { return static_cast<int>(blockDim.x); }
  template <typename F>
  __device__ __forceinline__ void each(F&& f) { f(static_cast<int>(threadIdx.x)); }
  __device__ __forceinline__ void sync() { __syncthreads(); }
  // Team i is warp i; a block has exactly n * kLanes threads.
  template <typename F>
  __device__ __forceinline__ void teams(int n, F&& f) {
    const int i = static_cast<int>(threadIdx.x / kLanes);
    if (i < n) {
      DeviceTeam team;
      f(team, i);
    }
  }
};
#endif

}  // namespace atss
