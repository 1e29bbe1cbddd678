// atss::topk_candidates(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes,
//                       Tensor num_gt, int topk) -> Tensor
//
// Step 3 of SPEC.md section 2: per GT and per level, the topk valid anchors nearest to the GT.
//   anchors     float32 [N, 4], shared by the batch, levels concatenated
//   valid       bool [B, N], any mask (holes included)
//   level_sizes anchors per level, summing to N
//   gt_boxes    float32 [B, M, 4], padded; rows >= num_gt[b] unused
//   num_gt      int64 [B] (clamped to [0, M]; the Python layer checks the range)
//   topk        in [1, 64]
// Returns int64 [B, M, L * topk]: for level l, entries [l * topk, (l + 1) * topk) are anchor
// indices into N, nearest first by float32 Euclidean centre distance; equal distances: the
// lower index first, and the lower index wins the last place; then -1 where the level has
// fewer valid anchors than topk. Padding rows are all -1.
// Grid levels (see common/atss_candidates.h) are searched in a window around the GT centre,
// others scanned in full: memory O(B * N + B * M * L * topk), never B x N x M.
#pragma once

#include <ATen/ATen.h>

namespace atss {

at::Tensor topk_candidates_cpu(const at::Tensor& anchors, const at::Tensor& valid, at::IntArrayRef level_sizes,
                               const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk);
#ifdef ATSS_WITH_CUDA
at::Tensor topk_candidates_cuda(const at::Tensor& anchors, const at::Tensor& valid, at::IntArrayRef level_sizes,
                                const at::Tensor& gt_boxes, const at::Tensor& num_gt, int64_t topk);
// The candidates of contiguous CUDA inputs into `out` (int64 [B, M, L * topk]), given the level
// table and valid counts of prepare_levels_cuda. Shared with atss_assign_cuda.
void launch_topk_candidates_cuda(const at::Tensor& anchors, const at::Tensor& valid, const at::Tensor& gt_boxes,
                                 const at::Tensor& num_gt, const at::Tensor& table, const at::Tensor& counts,
                                 int64_t topk, at::Tensor& out);
#endif

}  // namespace atss
