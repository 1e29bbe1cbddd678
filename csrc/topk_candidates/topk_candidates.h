// atss::topk_candidates(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes,
//                       Tensor num_gt, int topk, int[]? grid_hw, int[]? strides,
//                       Tensor? extent) -> Tensor
//
// Step 3 of SPEC.md section 2: per GT and per level, the topk valid anchors nearest to the GT.
//   anchors     float32 [N, 4], shared by the batch, levels concatenated
//   valid       bool [B, N], any mask (holes included)
//   level_sizes anchors per level, summing to N
//   gt_boxes    float32 [B, M, 4], padded; rows >= num_gt[b] unused
//   num_gt      int64 [B] (clamped to [0, M]; the Python layer checks the range)
//   topk        in [1, 64]
//   geometry    optional, all three or none (ops.GridGeometry): grid_hw [H0, W0, H1, W1, ...]
//               with H_l * W_l = level_sizes[l], strides (one per level, >= 1), extent int64
//               [B, 2] = (pad_h, pad_w) of each image. The caller promises that level l is the
//               row-major grid of width W_l (see common/atss_candidates.h) and that valid[b]
//               on level l is exactly x < min(ceil(pad_w / s_l), W_l), y < min(ceil(pad_h /
//               s_l), H_l); the kernels then skip grid detection and valid counting. Same
//               result as without it (a broken promise gives wrong candidates, never an
//               out-of-bounds access). The CPU kernel checks its shapes and ignores it.
// Returns int64 [B, M, L * topk]: for level l, entries [l * topk, (l + 1) * topk) are anchor
// indices into N, nearest first by float32 Euclidean centre distance; equal distances: the
// lower index first, and the lower index wins the last place; then -1 where the level has
// fewer valid anchors than topk. Padding rows are all -1.
// Grid levels (see common/atss_candidates.h) are searched in a window around the GT centre,
// others scanned in full: memory O(B * N + B * M * L * topk), never B x N x M.
// CUDA: one block per (image, GT), a warp per level (common/gt_pass.h); one launch with
// geometry, two without.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace atss {

at::Tensor topk_candidates_cpu(const at::Tensor& anchors, const at::Tensor& valid, at::IntArrayRef level_sizes,
                               const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk,
                               at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                               const std::optional<at::Tensor>& extent);
#ifdef ATSS_WITH_CUDA
at::Tensor topk_candidates_cuda(const at::Tensor& anchors, const at::Tensor& valid, at::IntArrayRef level_sizes,
                                const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk,
                                at::OptionalIntArrayRef grid_hw, at::OptionalIntArrayRef strides,
                                const std::optional<at::Tensor>& extent);
#endif

}  // namespace atss
