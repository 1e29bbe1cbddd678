// atss::atss_assign(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes,
//                   Tensor num_gt, int topk, int[]? grid_hw, int[]? strides, Tensor? extent)
//                   -> (Tensor assigned, Tensor iou)
//
// The ATSS assignment of SPEC.md section 2 for a padded batch. Inputs as topk_candidates
// (topk_candidates/topk_candidates.h). Per GT: the candidates of step 3; threshold = mean +
// unbiased std of their IoUs (double, rounded to float; a GT with fewer than 2 candidates
// gets no positive); positive iff IoU >= threshold and centre inside the GT by > 0.01 px.
// Step 6 (an anchor positive for several GTs goes to the highest IoU, ties to the lower GT)
// is an unsigned maximum over 64-bit claims (atss::pack_claim), so the result does not depend
// on thread order and CPU == CUDA bit for bit.
// Returns assigned int64 [B, N] (0-based GT index, -1 background, -2 invalid anchor) and
// iou float32 [B, N] (IoU with the assigned GT, 0 elsewhere).
// Geometry (grid_hw, strides, extent: all or none; see topk_candidates.h) gives the same
// result; on CUDA it makes the call three launches (zero the claims, one pass with a block
// per (image, GT) and a warp per level, decode), without it four (a prepare kernel detects
// the grids and counts the valid anchors on the device). The CPU kernel checks and ignores it.
// Memory: the outputs (the claims live in `assigned` until decoded), plus O(B * M * L * topk)
// candidates on the CPU and O(B * L) level counts: never B x N x M.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace atss {

std::tuple<at::Tensor, at::Tensor> atss_assign_cpu(const at::Tensor& anchors, const at::Tensor& valid,
                                                   at::IntArrayRef level_sizes, const at::Tensor& gt_boxes,
                                                   const at::Tensor& num_gt, int64_t topk,
                                                   at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                   const std::optional<at::Tensor>& extent);
#ifdef ATSS_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> atss_assign_cuda(const at::Tensor& anchors, const at::Tensor& valid,
                                                    at::IntArrayRef level_sizes, const at::Tensor& gt_boxes,
                                                    const at::Tensor& num_gt, int64_t topk,
                                                    at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                                    const std::optional<at::Tensor>& extent);
#endif

}  // namespace atss
