// atss::box_iou(Tensor boxes1, Tensor boxes2) -> Tensor
//
// IoU of every pair: boxes1 float32 [B, N, 4] x boxes2 float32 [B, M, 4] -> float32 [B, N, M],
// or [N, 4] x [M, 4] -> [N, M]. Boxes (x1, y1, x2, y2), areas without +1, union clamped at
// 1e-6, MMDetection's order of operations (atss::box_iou in common/atss_math.h). No autograd.
#pragma once

#include <ATen/core/Tensor.h>

namespace atss {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2);
#ifdef ATSS_WITH_CUDA
at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2);
#endif

}  // namespace atss
