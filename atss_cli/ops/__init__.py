"""The Python face of the ATSS kernels.

```python
from atss_cli import ops
ops.box_iou(boxes1, boxes2)                                   # [B,N,4] x [B,M,4] -> [B,N,M]
ops.topk_candidates(anchors, valid, level_sizes, gt_boxes, num_gt, topk=9)   # int64 [B, M, L*topk]
ops.atss_assign(anchors, valid, level_sizes, gt_boxes, num_gt, topk=9, validate=True, backend="auto",
                geometry=None)
    # -> assigned int64 [B, N] (0-based GT, -1 background, -2 ignored), iou float32 [B, N]
```
Each op runs the compiled kernels (`atss_cli._C`, registered as `torch.ops.atss.*`) when they
are built for the tensors' device, else the pure-PyTorch reference (`ops.reference`);
`ops.extension.describe()` says which and why. Bad input raises `ops.OpsInputError`, an
`atss_cli.errors.AtssError` (and a ValueError) naming the argument and the bad value.
`ops.GridGeometry` (level grid shapes, strides, per-image extent) lets the assigner skip
re-deriving what the anchor generator knows (`geometry=`; same result).
"""

from atss_cli.ops import extension, reference
from atss_cli.ops.assign import atss_assign, topk_candidates
from atss_cli.ops.boxes import box_iou
from atss_cli.ops.checks import OpsInputError
from atss_cli.ops.geometry import GridGeometry

__all__ = ["atss_assign", "topk_candidates", "box_iou", "GridGeometry", "OpsInputError", "extension",
           "reference"]
