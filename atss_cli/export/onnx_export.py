"""`atss export`: a detector checkpoint (ours or MMDetection's) as one ONNX file that a runtime
alone turns into final detections.

    export_onnx(checkpoint, out, *, scale=None, score_thr=None, model_overrides=None,
                class_names=None, categories=None) -> dict
        Builds the model as `atss predict` does (atss_cli.inference.checkpoint), exports the network
        with torch.onnx.export, appends the post-processing (atss_cli.export.postprocess), stores
        the metadata, runs onnx.checker and writes the file atomically. Returns the metadata.

The graph (inputs and outputs are batched; B, H and W are dynamic, H and W multiples of 32):
    images        uint8 [B, 3, H, W]  RGB, each image resized as `test_input` does (keep ratio,
                                      OpenCV INTER_LINEAR) and zero-padded bottom and right
    img_shape     int64 [B, 2]        (h, w) of each resized image before padding
    scale_factor  float32 [B, 2]      (sx, sy) = resized / original size
    -> boxes float32 [B, D, 4] (original-image pixels), scores [B, D], labels int64 [B, D]
       (-1 in unused slots), num_detections int64 [B]; D <= max_per_img.
Normalisation is inside, and pixels past img_shape are zeroed after it, as the PyTorch pipeline
pads the normalised image with zeros. Images of different sizes in one batch are padded to the
largest: GroupNorm then sees the extra padding, as it does in a padded PyTorch batch, so results
equal a one-image call only for images of the batch's padded size.

Exporter: torch 2.14 still has the TorchScript exporter (`dynamo=False`, deprecated since 2.9 with
a DeprecationWarning). We use it: the graph it traces here (convolutions, norms, nearest
upsampling to the next level's size) is exactly what we want, it writes opset 17 directly, and it
takes seconds where the torch.export-based one takes tens of seconds for the same network and
writes opset 18 that is then down-converted. The post-processing is not traced at all; it is
built node by node, so no exporter decides how TopK or NonMaxSuppression come out.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

from atss_cli.errors import AtssError, param

# ONNX Runtime, TensorRT (8.6 and 10.x: opsets up to 17 and beyond) and OpenVINO (2023+) all take
# opset 17; everything used here (TopK, NonMaxSuppression, GatherND batch_dims, ScatterND) exists since 13.
OPSET = 17
FORMAT = "atss-onnx-1"
INPUT_NAMES = ("images", "img_shape", "scale_factor")


def _wrapper(model):
    import torch
    from torch import nn

    from atss_cli.data.transforms import MEAN, STD

    class Network(nn.Module):
        """uint8 padded RGB batch + img_shape -> the head's raw outputs, flat over the levels."""

        def __init__(self, detector):
            super().__init__()
            self.detector = detector
            self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, images, img_shape):
            x = (images.to(torch.float32) - self.mean) / self.std
            h, w = images.shape[-2], images.shape[-1]
            rows = torch.arange(h, device=images.device)[None, :] < img_shape[:, 0:1]     # [B, H]
            cols = torch.arange(w, device=images.device)[None, :] < img_shape[:, 1:2]     # [B, W]
            inside = rows[:, None, :, None] & cols[:, None, None, :]
            x = torch.where(inside, x, torch.zeros((), dtype=x.dtype))
            feats = self.detector.neck(self.detector.backbone(x))
            cls, box, ctr = self.detector.bbox_head(feats)
            return tuple(t for level in zip(cls, box, ctr) for t in level)

    return Network(model).eval()


def export_network(model, opset: int = OPSET):
    """The network part (normalisation + backbone + FPN + head) as an onnx.ModelProto."""
    import onnx
    import torch

    net = _wrapper(model)
    levels = len(model.anchor_generator.strides)
    outputs = [f"{kind}_{i}" for i in range(levels) for kind in ("cls", "box", "ctr")]
    # Traced at 256 px: every level at least 2x2 (GroupNorm in PyTorch refuses one value per group).
    images = torch.zeros((1, 3, 256, 256), dtype=torch.uint8)
    img_shape = torch.tensor([[256, 256]], dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(net, (images, img_shape), buf, dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES[:2]), output_names=outputs,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "img_shape": {0: "batch"},
                                        **{name: {0: "batch", 2: f"h_{name[-1]}", 3: f"w_{name[-1]}"}
                                           for name in outputs}})
    proto = onnx.load_from_string(buf.getvalue())
    return proto, [tuple(outputs[3 * i:3 * i + 3]) for i in range(levels)]


def build_onnx(model, *, metadata: dict, opset: int = OPSET):
    """The whole graph for `model` (an ATSS in eval mode) with `metadata` stored as strings."""
    import onnx
    from onnx import TensorProto, helper

    from atss_cli.export.postprocess import add_postprocess

    proto, levels = export_network(model, opset)
    graph = proto.graph
    graph.input.append(helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, ["batch", 2]))
    add_postprocess(graph, levels, "img_shape", "scale_factor", strides=model.anchor_generator.strides,
                    num_classes=model.num_classes, anchor_scale=model.anchor_generator.octave_scale,
                    score_thr=model.score_thr, nms_pre=model.nms_pre, nms_iou=model.nms_iou,
                    max_per_img=model.max_per_img)
    graph.name = "atss"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "atss_cli"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_metadata(model, *, categories: list[dict], scale, source: str, model_fields: dict) -> dict:
    from atss_cli.data.transforms import MEAN, SIZE_DIVISOR, STD

    return {"format": FORMAT, "categories": categories, "class_names": [c["name"] for c in categories],
            "num_classes": model.num_classes, "scale": list(scale), "size_divisor": SIZE_DIVISOR,
            "mean": list(MEAN), "std": list(STD), "score_thr": model.score_thr, "nms_pre": model.nms_pre,
            "nms_iou": model.nms_iou, "max_per_img": model.max_per_img, "opset": OPSET,
            "inputs": list(INPUT_NAMES), "model": model_fields, "source": source}


def check_out_path(out: str | Path) -> Path:
    """A one-line error now, before minutes of work, for a place the file cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise AtssError(f"{param('out')} {out} is a folder; give a file name such as {out / 'model.onnx'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise AtssError(f"{param('out')} {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AtssError(f"{param('out')} {out}: folder {parent} is not writable")
    return out


def export_onnx(checkpoint: str | Path, out: str | Path, *, scale: tuple[int, int] | None = None,
                score_thr: float | None = None, model_overrides: dict | None = None,
                class_names: list[str] | None = None, categories: list[dict] | None = None) -> dict:
    """Export `checkpoint` to `out`; returns the metadata written. `score_thr` replaces the
    model's pre-NMS threshold (0.05) inside the graph; `scale` the test scale stored for the
    runtime's resize (default: checkpoint config, else 1333x800)."""
    from atss_cli.atomic import atomic_write_bytes
    from atss_cli.data.categories import load_coco_categories
    from atss_cli.inference.checkpoint import load_detector

    out = check_out_path(out)
    loaded = load_detector(checkpoint, device="cpu", overrides=model_overrides, scale=scale)
    model, info = loaded.model, loaded.info
    if score_thr is not None:
        if not 0.0 <= score_thr < 1.0:
            raise AtssError(f"{param('score_thr')} must be in [0, 1), got {score_thr}")
        model.score_thr = float(score_thr)
    if categories is not None and len(categories) != info.num_classes:
        raise AtssError(f"{len(categories)} categories given but {Path(checkpoint).name} predicts "
                        f"{info.num_classes} classes")
    if categories is None:
        if loaded.categories is not None:
            categories = loaded.categories
        else:
            names = class_names or loaded.class_names
            coco = load_coco_categories()
            ids = [c["id"] for c in coco] if info.num_classes == len(coco) else list(range(info.num_classes))
            categories = [{"id": i, "name": n} for i, n in zip(ids, names)]
    metadata = export_metadata(model, categories=categories, scale=loaded.scale, source=Path(checkpoint).name,
                               model_fields=loaded.fields or {"depth": 50})
    proto = build_onnx(model, metadata=metadata)
    try:
        atomic_write_bytes(out, proto.SerializeToString())
    except OSError as exc:
        raise AtssError(f"cannot write {out}: {exc.strerror or exc}") from None
    return metadata
