"""The ATSS detector (issue 3): ResNet + FPN + ATSS head, MMDetection's parameter names.

```python
from atss_cli.model import build_atss, load_checkpoint, load_backbone
model = build_atss(num_classes=80, depth=50)                 # or build_atss_preset("tiny", 80)
cls_scores, bbox_preds, centernesses = model(images)         # lists over 5 levels
losses = model.loss(images, targets)    # {"loss_cls", "loss_bbox", "loss_centerness"}
dets = model.predict(images, img_shapes, scale_factors)      # [{"boxes", "scores", "labels"}]
report = load_checkpoint(model, "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth")
```
Modules: `backbone` (ResNet), `fpn`, `head`, `anchors` (anchors, valid flags, box coder), `loss`
(targets and losses), `postprocess`, `detector` (ATSS, build_atss, presets), `checkpoint`.
"""

from atss_cli.model.checkpoint import (TORCHVISION_RESNET_FILES, LoadReport, load_backbone,
                                       load_checkpoint)
from atss_cli.model.detector import ATSS, PRESETS, build_atss, build_atss_preset

__all__ = ["ATSS", "PRESETS", "build_atss", "build_atss_preset", "load_checkpoint", "load_backbone",
           "LoadReport", "TORCHVISION_RESNET_FILES"]
