"""MMDetection's side of `bench/trajectory.py`, run by MMDetection's own python (it never
imports atss_cli):

    MMDET_PY bench/mmdet_trajectory.py --inputs DIR --out FILE [--depth 50] [--threads 2]

From `atss_r50_fpn_1x_coco.py` as its wheel ships it: the model (`num_classes` from the inputs,
`--depth` edits the backbone depth and the FPN's input widths), the optimizer wrapper built by
`build_optim_wrapper(model, cfg.optim_wrapper)` (DefaultOptimWrapperConstructor: its rules for
parameter groups and weight decay), and the two parameter schedulers of `cfg.param_scheduler`
with only the numbers the comparison shrinks: LinearLR `end` (warmup iterations) and MultiStepLR
`milestones`. The loop is what MMEngine's EpochBasedTrainLoop does per iteration, minus the data
preprocessor (the inputs are already the normalised, padded batches our pipeline produced):
`model.loss` -> `model.parse_losses` -> `optim_wrapper.update_params`, then ParamSchedulerHook's
`after_train_iter` (iteration-based schedulers step) and, after an epoch's last iteration, its
`after_train_epoch` (epoch-based schedulers step).

DIR holds `init.pth` ({"state_dict"}: the common initial weights) and `batches.pt` (per
iteration: images [B, 3, H, W] float32 and per image boxes, labels, img_shape, scale_factor,
ori_shape, flip) and `setup.json` (num_classes, epoch_length, warmup_iters, milestones). FILE
gets the lr before each iteration, the losses each iteration computed, and the final weights
and SGD momentum buffers by parameter name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

CONFIG = Path(".mim") / "configs" / "atss" / "atss_r50_fpn_1x_coco.py"
FPN_IN = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
          101: [256, 512, 1024, 2048]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    import mmcv
    import mmdet
    import mmengine
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmengine.structures import InstanceData

    inputs = Path(args.inputs)
    setup = json.loads((inputs / "setup.json").read_text())
    register_all_modules()
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.depth = args.depth
    cfg.model.neck.in_channels = FPN_IN[args.depth]
    cfg.model.bbox_head.num_classes = setup["num_classes"]
    model_fields = setup.get("model") or {}   # a smaller preset (bench/train_map_side_by_side.py)
    if model_fields:
        cfg.model.backbone.depth = model_fields["depth"]
        cfg.model.backbone.frozen_stages = model_fields["frozen_stages"]
        cfg.model.backbone.norm_eval = model_fields["norm_eval"]
        cfg.model.neck.in_channels = FPN_IN[model_fields["depth"]]
        cfg.model.neck.out_channels = model_fields["fpn_channels"]
        cfg.model.bbox_head.in_channels = model_fields["fpn_channels"]
        cfg.model.bbox_head.feat_channels = model_fields["head_channels"]
        cfg.model.bbox_head.stacked_convs = model_fields["stacked_convs"]
    model = MODELS.build(cfg.model)
    state = torch.load(inputs / "init.pth", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=True)
    model.train()

    if "lr" in setup:
        cfg.optim_wrapper.optimizer.lr = setup["lr"]
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    schedulers = []
    for sched in cfg.param_scheduler:
        sched = dict(sched)
        if sched["type"] == "LinearLR":
            sched["end"] = setup["warmup_iters"]
        elif sched["type"] == "MultiStepLR":
            sched["milestones"] = list(setup["milestones"])
        schedulers.append(PARAM_SCHEDULERS.build(
            sched, default_args=dict(optimizer=optim_wrapper, epoch_length=setup["epoch_length"])))

    batches = torch.load(inputs / "batches.pt", map_location="cpu", weights_only=True)
    lrs, losses, early = [], [], None
    for it, batch in enumerate(batches):
        images = batch["images"]
        h, w = images.shape[-2:]
        samples = []
        for t in batch["targets"]:
            ih, iw = t["img_shape"]
            s = DetDataSample(metainfo={
                "img_shape": tuple(t["img_shape"]), "ori_shape": tuple(t["ori_shape"]),
                "scale_factor": tuple(t["scale_factor"]), "flip": bool(t["flip"]),
                "pad_shape": (math.ceil(ih / 32) * 32, math.ceil(iw / 32) * 32),
                "batch_input_shape": (int(h), int(w))})
            s.gt_instances = InstanceData(bboxes=t["boxes"].reshape(-1, 4).float(), labels=t["labels"].long())
            samples.append(s)
        lrs.append(float(optim_wrapper.get_lr()["lr"][0]))
        raw = model.loss(images, samples)
        parsed, log_vars = model.parse_losses(raw)
        optim_wrapper.update_params(parsed)
        losses.append({k: float(v.detach()) for k, v in log_vars.items()})
        for s in schedulers:                    # ParamSchedulerHook.after_train_iter
            if not s.by_epoch:
                s.step()
        if (it + 1) % setup["epoch_length"] == 0:
            for s in schedulers:                # ParamSchedulerHook.after_train_epoch
                if s.by_epoch:
                    s.step()
        print(f"mmdet iteration {it + 1}: lr {lrs[-1]:.9g} loss {losses[-1]['loss']:.9g}", flush=True)
        if it + 1 == setup.get("early_iters", 2):  # the first updates, before float noise has grown
            opt = optim_wrapper.optimizer
            early = {"iters": it + 1,
                     "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                     "momentum": {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()
                                  if p in opt.state and "momentum_buffer" in opt.state[p]}}

    optimizer = optim_wrapper.optimizer
    momentum = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()
                if p in optimizer.state and "momentum_buffer" in optimizer.state[p]}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])}
              for g in optimizer.param_groups]
    torch.save({"lrs": lrs, "losses": losses, "early": early,
                "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "momentum": momentum, "param_groups": groups,
                "constructor": type(optim_wrapper).__name__ + " via build_optim_wrapper "
                               f"({cfg.optim_wrapper.get('constructor', 'DefaultOptimWrapperConstructor')})",
                "schedulers": [type(s).__name__ for s in schedulers],
                "versions": {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                             "torch": str(torch.__version__), "python": platform.python_version()}}, args.out)


if __name__ == "__main__":
    main()
