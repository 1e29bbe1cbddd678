#include "common/levels_cuda.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/atss_candidates.h"

namespace atss {
namespace {

struct LevelArgs {
  int64_t start[kMaxCudaLevels];
  int64_t size[kMaxCudaLevels];
};

constexpr int kThreads = 256;

// One block per level: the grid width (first anchor whose centre y differs from the first's),
// then every anchor checked against the grid (common/atss_candidates.h, on_grid).
__global__ void detect_grids_kernel(const float* __restrict__ anchors, LevelArgs args, int64_t* __restrict__ table) {
  const int l = blockIdx.x;
  const int64_t start = args.start[l], size = args.size[l];
  __shared__ unsigned long long width;
  __shared__ int ok;
  if (threadIdx.x == 0) {
    width = static_cast<unsigned long long>(size);
    ok = size > 0;
  }
  __syncthreads();
  if (size > 0) {
    const float cy0 = anchor_cy(anchors, start);
    for (int64_t i = 1 + threadIdx.x; i < size; i += blockDim.x) {
      if (!(anchor_cy(anchors, start + i) == cy0)) {
        atomicMin(&width, static_cast<unsigned long long>(i));
        break;  // later i of this thread are larger
      }
    }
  }
  __syncthreads();
  const int64_t w = static_cast<int64_t>(width);
  if (size > 0 && size % w != 0) ok = 0;  // benign race: every writer writes 0
  __syncthreads();
  if (ok) {
    for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
      if (!on_grid(anchors, start, w, i)) {
        ok = 0;
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t* row = table + l * kLevelFieldsCount;
    row[kStart] = start;
    row[kSize] = size;
    row[kWidth] = w;
    row[kIsGrid] = ok ? 1 : 0;
  }
}

// One block per (image, level): its number of valid anchors.
__global__ void count_valid_kernel(const bool* __restrict__ valid, int64_t n, int num_levels, LevelArgs args,
                                   int64_t* __restrict__ counts) {
  const int64_t b = blockIdx.x / num_levels;
  const int l = blockIdx.x % num_levels;
  const bool* row = valid + b * n + args.start[l];
  const int64_t size = args.size[l];
  int64_t total = 0;
  for (int64_t base = 0; base < size; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    total += __syncthreads_count(i < size && row[i]);
  }
  if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> prepare_levels_cuda(const at::Tensor& anchors, const at::Tensor& valid,
                                                       const at::Tensor& levels_cpu) {
  const int num_levels = static_cast<int>(levels_cpu.size(0));
  TORCH_CHECK(num_levels <= kMaxCudaLevels, "level_sizes: at most ", kMaxCudaLevels,
              " levels on CUDA, got ", num_levels);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  LevelArgs args{};
  const int64_t* lv = levels_cpu.data_ptr<int64_t>();
  for (int l = 0; l < num_levels; ++l) {
    args.start[l] = lv[l * kLevelFieldsCount + kStart];
    args.size[l] = lv[l * kLevelFieldsCount + kSize];
  }
  const auto opts = anchors.options().dtype(at::kLong);
  at::Tensor table = at::empty({num_levels, kLevelFieldsCount}, opts);
  at::Tensor counts = at::empty({valid.size(0), num_levels}, opts);
  detect_grids_kernel<<<num_levels, kThreads, 0, stream>>>(anchors.data_ptr<float>(), args,
                                                           table.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (valid.size(0) > 0) {
    count_valid_kernel<<<static_cast<unsigned>(valid.size(0) * num_levels), kThreads, 0, stream>>>(
        valid.data_ptr<bool>(), valid.size(1), num_levels, args, counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {table, counts};
}

}  // namespace atss
