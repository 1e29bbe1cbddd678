"""ATSS post-processing (atss_cli/model/postprocess.py, SPEC.md section 4) as standard ONNX nodes.

`add_postprocess(graph, ...)` appends to an ONNX graph whose outputs are the head's raw outputs
per level (cls logits [B, C, H, W], box deltas [B, 4, H, W], centerness logits [B, 1, H, W])
the nodes that turn them into final detections, batched:

    per level: sigmoid, TopK(min(nms_pre, H*W*C)) over the (anchor, class) pairs, a pair counts
      when its score > score_thr (top-k then threshold keeps the same pairs as threshold then
      top-k); anchors from the level's grid; delta-xywh decode clipped to img_shape
    all levels: boxes / scale_factor, score x sigmoid(centerness), width and height > 0,
      class-aware NMS as NonMaxSuppression over [B, C, K] scores (a pair's score in its own
      class row, -1 elsewhere), then the max_per_img best of what NMS kept.

Outputs: boxes [B, D, 4] float32 (original-image pixels), scores [B, D] float32, labels [B, D]
int64, num_detections [B] int64, D = min(max_per_img, C * K); slots past num_detections hold
zeros and label -1. Rows are sorted by descending score, as torchvision's batched_nms returns.

The per-class score matrix (not the offset-by-class trick) keeps the NMS IoU computed from the
boxes themselves: offsetting coordinates by label x a large number costs float32 precision, and
the IoU would no longer equal the PyTorch one to 1e-5. The arithmetic mirrors the PyTorch code
operation by operation (same order, float32), so that the two agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# atss_cli/model/anchors.py's coder constants (copied so that this module needs no torch).
XY_STD, WH_STD = 0.1, 0.2
MAX_LOG_RATIO = abs(math.log(16 / 1000))
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


class _Builder:
    def __init__(self, graph):
        self.graph = graph
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"pp/{hint}_{self.n}"

    def const(self, value, dtype, hint="c") -> str:
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs, hint=None, outputs=1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def add_postprocess(graph, level_outputs, img_shape: str, scale_factor: str, *, strides, num_classes: int,
                    anchor_scale: float = 8.0, score_thr: float = 0.05, nms_pre: int = 1000,
                    nms_iou: float = 0.6, max_per_img: int = 100) -> None:
    """level_outputs: [(cls, box, ctr) output names] per level; img_shape int64 [B, 2] (h, w);
    scale_factor float32 [B, 2] (sx, sy). Replaces the graph's outputs with OUTPUT_NAMES."""
    b = _Builder(graph)
    i64, f32 = np.int64, np.float32
    zero_i, one_i = b.const([0], i64), b.const([1], i64)
    c_num = b.const(num_classes, i64, "num_classes")
    scores_l, labels_l, boxes_l, ctr_l = [], [], [], []
    h_img = b.op("Cast", [b.op("Gather", [img_shape, b.const([0], i64)], axis=1)], to=TensorProto.FLOAT)  # [B, 1]
    w_img = b.op("Cast", [b.op("Gather", [img_shape, b.const([1], i64)], axis=1)], to=TensorProto.FLOAT)
    for (cls, box, ctr), stride in zip(level_outputs, strides):
        # probs [B, A*C] in (anchor, class) row-major order, as select_level flattens them.
        probs = b.op("Sigmoid", [b.op("Reshape", [b.op("Transpose", [cls], perm=[0, 2, 3, 1]),
                                                  b.const([0, -1], i64)])])
        n_pairs = b.op("Slice", [b.op("Shape", [probs]), one_i, b.const([2], i64)])
        k = b.op("Min", [n_pairs, b.const([nms_pre], i64)])
        top, idx = b.op("TopK", [probs, k], outputs=2, axis=1, largest=1, sorted=1)
        anchor = b.op("Div", [idx, c_num])                                  # [B, k] int64
        labels_l.append(b.op("Mod", [idx, c_num]))
        scores_l.append(b.op("Where", [b.op("Greater", [top, b.const(score_thr, f32)]), top,
                                       b.const(-1.0, f32)]))
        deltas = b.op("Reshape", [b.op("Transpose", [box], perm=[0, 2, 3, 1]), b.const([0, -1, 4], i64)])
        deltas = b.op("GatherND", [deltas, b.op("Unsqueeze", [anchor, b.const([2], i64)])], batch_dims=1)
        ctr_flat = b.op("Reshape", [ctr, b.const([0, -1], i64)])
        ctr_l.append(b.op("Sigmoid", [b.op("GatherElements", [ctr_flat, anchor], axis=1)]))
        # The anchor of index a on a W-wide grid: centre (a % W, a // W) * stride, side 8 * stride.
        width = b.op("Slice", [b.op("Shape", [cls]), b.const([3], i64), b.const([4], i64)])
        stride_c = b.const(stride, i64)
        cx = b.op("Cast", [b.op("Mul", [b.op("Mod", [anchor, width]), stride_c])], to=TensorProto.FLOAT)
        cy = b.op("Cast", [b.op("Mul", [b.op("Div", [anchor, width]), stride_c])], to=TensorProto.FLOAT)
        half = b.const(0.5 * anchor_scale * stride, f32)
        a_x1, a_y1 = b.op("Sub", [cx, half]), b.op("Sub", [cy, half])
        a_x2, a_y2 = b.op("Add", [cx, half]), b.op("Add", [cy, half])
        boxes_l.append(_decode(b, (a_x1, a_y1, a_x2, a_y2), deltas, h_img, w_img))
    scores = b.op("Concat", scores_l, axis=1)                                  # [B, K]; -1: below score_thr
    labels = b.op("Concat", labels_l, axis=1)
    x1, y1, x2, y2 = (b.op("Concat", [bx[i] for bx in boxes_l], axis=1) for i in range(4))
    # Back to the original image: multiply by 1 / scale factor, as the PyTorch code does.
    inv = b.op("Reciprocal", [scale_factor])
    inv_x = b.op("Gather", [inv, b.const([0], i64)], axis=1)
    inv_y = b.op("Gather", [inv, b.const([1], i64)], axis=1)
    x1, x2 = b.op("Mul", [x1, inv_x]), b.op("Mul", [x2, inv_x])
    y1, y2 = b.op("Mul", [y1, inv_y]), b.op("Mul", [y2, inv_y])
    kept = b.op("Greater", [scores, b.const(-0.5, f32)])
    scores = b.op("Mul", [scores, b.op("Concat", ctr_l, axis=1)])
    zero_f = b.const(0.0, f32)
    ok = b.op("And", [b.op("Greater", [b.op("Sub", [x2, x1]), zero_f]),
                      b.op("Greater", [b.op("Sub", [y2, y1]), zero_f])])
    ok = b.op("And", [ok, kept])
    scores = b.op("Where", [ok, scores, b.const(-1.0, f32)])                 # [B, K]
    boxes = b.op("Concat", [b.op("Unsqueeze", [v, b.const([2], i64)]) for v in (x1, y1, x2, y2)], axis=2)

    # Class-aware NMS: row c of [B, C, K] holds the scores of class-c pairs, -1 elsewhere.
    classes = b.const(np.arange(num_classes, dtype=i64).reshape(1, -1, 1), i64, "classes")
    own = b.op("Equal", [b.op("Unsqueeze", [labels, one_i]), classes])       # [B, C, K]
    class_scores = b.op("Where", [own, b.op("Unsqueeze", [scores, one_i]), b.const(-1.0, f32)])
    selected = b.op("NonMaxSuppression", [boxes, class_scores, b.const([max_per_img], i64),
                                          b.const([nms_iou], f32), b.const([-0.5], f32)])  # [S, 3]
    # Scatter the kept scores into a dense [B, C*K] (-1 elsewhere); its top max_per_img are the
    # detections, the index giving class (// K) and pair (% K).
    sel_b = b.op("Gather", [selected, zero_i], axis=1)                       # [S, 1]
    sel_c = b.op("Gather", [selected, one_i], axis=1)
    sel_k = b.op("Gather", [selected, b.const([2], i64)], axis=1)
    k_total = b.op("Slice", [b.op("Shape", [scores]), one_i, b.const([2], i64)])   # [1]
    flat = b.op("Add", [b.op("Mul", [sel_c, k_total]), sel_k])
    kept_scores = b.op("GatherND", [scores, b.op("Concat", [sel_b, sel_k], axis=1)])  # [S]
    batch = b.op("Slice", [b.op("Shape", [scores]), zero_i, one_i])
    n_flat = b.op("Mul", [k_total, c_num])
    dense = b.op("Expand", [b.const(-1.0, f32), b.op("Concat", [batch, n_flat], axis=0)])
    dense = b.op("ScatterND", [dense, b.op("Concat", [sel_b, flat], axis=1), kept_scores])
    d = b.op("Min", [n_flat, b.const([max_per_img], i64)])
    top, top_idx = b.op("TopK", [dense, d], outputs=2, axis=1, largest=1, sorted=1)
    valid = b.op("Greater", [top, b.const(-0.5, f32)])                       # [B, D]
    pair = b.op("Mod", [top_idx, k_total])
    label = b.op("Div", [top_idx, k_total])
    out_boxes = b.op("GatherND", [boxes, b.op("Unsqueeze", [pair, b.const([2], i64)])], batch_dims=1)
    graph.node.append(helper.make_node(
        "Where", [b.op("Unsqueeze", [valid, b.const([2], i64)]), out_boxes, zero_f], ["boxes"]))
    graph.node.append(helper.make_node("Where", [valid, top, zero_f], ["scores"]))
    graph.node.append(helper.make_node("Where", [valid, label, b.const(-1, i64)], ["labels"]))
    graph.node.append(helper.make_node(
        "ReduceSum", [b.op("Cast", [valid], to=TensorProto.INT64), one_i], ["num_detections"], keepdims=0))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", "max_detections", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "max_detections"]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", "max_detections"]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["batch"]),
    ])


def _decode(b: _Builder, anchor, deltas, h_img, w_img):
    """anchors.decode with max_shape, on [B, k] coordinates: the same float32 operations in the
    same order. Returns (x1, y1, x2, y2), each [B, k]."""
    i64, f32 = np.int64, np.float32
    a_x1, a_y1, a_x2, a_y2 = anchor
    d = [b.op("Squeeze", [b.op("Slice", [deltas, b.const([i], i64), b.const([i + 1], i64), b.const([2], i64)]),
                          b.const([2], i64)]) for i in range(4)]
    half, xy_std, wh_std = b.const(0.5, f32), b.const(XY_STD, f32), b.const(WH_STD, f32)
    lo, hi = b.const(-MAX_LOG_RATIO, f32), b.const(MAX_LOG_RATIO, f32)
    px = b.op("Mul", [b.op("Add", [a_x1, a_x2]), half])
    py = b.op("Mul", [b.op("Add", [a_y1, a_y2]), half])
    pw, ph = b.op("Sub", [a_x2, a_x1]), b.op("Sub", [a_y2, a_y1])
    gx = b.op("Add", [px, b.op("Mul", [pw, b.op("Mul", [d[0], xy_std])])])
    gy = b.op("Add", [py, b.op("Mul", [ph, b.op("Mul", [d[1], xy_std])])])
    gw = b.op("Mul", [pw, b.op("Exp", [b.op("Clip", [b.op("Mul", [d[2], wh_std]), lo, hi])])])
    gh = b.op("Mul", [ph, b.op("Exp", [b.op("Clip", [b.op("Mul", [d[3], wh_std]), lo, hi])])])
    hw, hh = b.op("Mul", [gw, half]), b.op("Mul", [gh, half])
    x1, x2 = b.op("Sub", [gx, hw]), b.op("Add", [gx, hw])
    y1, y2 = b.op("Sub", [gy, hh]), b.op("Add", [gy, hh])
    zero = b.const(0.0, f32)
    # torch's clamp(0, w) is min(max(x, 0), w).
    clip_x = [b.op("Min", [b.op("Max", [v, zero]), w_img]) for v in (x1, x2)]
    clip_y = [b.op("Min", [b.op("Max", [v, zero]), h_img]) for v in (y1, y2)]
    return clip_x[0], clip_y[0], clip_x[1], clip_y[1]
