// The op surface of atss_cli._C, in one place. Kernels: <op>/<op>_cpu.cpp and <op>/<op>_cuda.cu
// (each ends with its TORCH_LIBRARY_IMPL); fake (meta) kernels: atss_cli/ops/*.py; contracts:
// <op>/<op>.h.
#include <torch/library.h>

TORCH_LIBRARY(atss, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  // The trailing optional arguments are the geometry (ops.GridGeometry; all or none):
  // grid_hw = [H0, W0, H1, W1, ...], strides = one per level, extent = int64 [B, 2].
  m.def("topk_candidates(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes, Tensor num_gt, "
        "int topk, int[]? grid_hw=None, int[]? strides=None, Tensor? extent=None) -> Tensor");
  m.def("atss_assign(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes, Tensor num_gt, "
        "int topk, int[]? grid_hw=None, int[]? strides=None, Tensor? extent=None) -> (Tensor, Tensor)");
}
