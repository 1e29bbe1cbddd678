// The op surface of atss_cli._C, in one place. Kernels: <op>/<op>_cpu.cpp and <op>/<op>_cuda.cu
// (each ends with its TORCH_LIBRARY_IMPL); fake (meta) kernels: atss_cli/ops/*.py; contracts:
// <op>/<op>.h.
#include <torch/library.h>

TORCH_LIBRARY(atss, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("topk_candidates(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes, Tensor num_gt, "
        "int topk) -> Tensor");
  m.def("atss_assign(Tensor anchors, Tensor valid, int[] level_sizes, Tensor gt_boxes, Tensor num_gt, "
        "int topk) -> (Tensor, Tensor)");
}
