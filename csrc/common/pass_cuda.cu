#include "common/pass_cuda.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/levels_kernel.h"

namespace atss {
namespace {

__global__ void prepare_kernel(PrepareArgs args) {
  __shared__ __align__(16) unsigned char smem[kPrepareThreads * 8];
  DeviceBlock blk;
  prepare_block(blk, blockIdx.x, args, smem);
}

__global__ void gt_pass_kernel(PassArgs args) {
  extern __shared__ __align__(16) unsigned char smem[];
  DeviceBlock blk;
  gt_pass_block(blk, blockIdx.x, args, smem);
}

unsigned grid_dim(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks < (int64_t{1} << 31), what, ": at most 2^31 - 1 blocks, got ", blocks);
  return static_cast<unsigned>(blocks);
}

}  // namespace

PassArgs pass_args_cuda(const at::Tensor& anchors, const at::Tensor& valid, const at::Tensor& levels_cpu,
                        const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk,
                        const std::optional<Geometry>& geometry, std::vector<at::Tensor>& hold) {
  const int num_levels = static_cast<int>(levels_cpu.size(0));
  TORCH_CHECK(num_levels <= kMaxKernelLevels, "level_sizes: at most ", kMaxKernelLevels, " levels on CUDA, got ",
              num_levels);
  TORCH_CHECK(anchors.size(0) < (int64_t{1} << 31), "anchors: at most 2^31 - 1 anchors on CUDA, got ",
              anchors.size(0));
  PassArgs a{};
  a.anchors = anchors.data_ptr<float>();
  a.valid = valid.data_ptr<bool>();
  a.gt_boxes = gt_boxes.data_ptr<float>();
  a.num_gt = num_gt.data_ptr<int64_t>();
  a.b = gt_boxes.size(0);
  a.m = gt_boxes.size(1);
  a.n = anchors.size(0);
  a.num_levels = num_levels;
  a.topk = static_cast<int>(topk);
  const int64_t* lv = levels_cpu.data_ptr<int64_t>();
  for (int l = 0; l < num_levels; ++l) {
    a.levels.start[l] = lv[l * kLevelFieldsCount + kStart];
    a.levels.size[l] = lv[l * kLevelFieldsCount + kSize];
  }
  if (geometry) {
    for (int l = 0; l < num_levels; ++l) {
      a.levels.height[l] = geometry->height[l];
      a.levels.width[l] = geometry->width[l];
      a.levels.stride[l] = geometry->stride[l];
    }
    a.extent = geometry->extent.data_ptr<int64_t>();
    return a;
  }
  const auto opts = anchors.options().dtype(at::kLong);
  at::Tensor table = at::empty({num_levels, kLevelFieldsCount}, opts);
  at::Tensor counts = at::empty({a.b, num_levels}, opts);
  PrepareArgs p{};
  p.anchors = a.anchors;
  p.valid = a.valid;
  p.b = a.b;
  p.n = a.n;
  p.num_levels = num_levels;
  for (int l = 0; l < num_levels; ++l) {
    p.start[l] = a.levels.start[l];
    p.size[l] = a.levels.size[l];
  }
  p.table = table.data_ptr<int64_t>();
  p.counts = counts.data_ptr<int64_t>();
  const Launch launch = prepare_launch(a.b, num_levels);
  prepare_kernel<<<grid_dim(launch.blocks, "prepare"), launch.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  a.table = p.table;
  a.counts = p.counts;
  hold.push_back(table);
  hold.push_back(counts);
  return a;
}

void launch_gt_pass_cuda(const PassArgs& args) {
  const Launch launch = gt_pass_launch(args.b, args.m, args.num_levels, args.topk);
  if (launch.blocks == 0) return;
  gt_pass_kernel<<<grid_dim(launch.blocks, "the assignment pass"), launch.threads, launch.smem,
                   c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace atss
