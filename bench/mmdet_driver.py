"""MMDetection's side of `bench/side_by_side.py`, run by MMDetection's own python
(protocol and input files: bench/driver_common.py; it never imports atss_cli).

    MMDET_PY bench/mmdet_driver.py --inputs DIR --threads 2 [--depth 50]

The model is built from the config MMDetection ships in its wheel
(`mmdet/.mim/configs/atss/atss_r50_fpn_1x_coco.py`; `--depth` 18/34/101 edits the backbone
depth and the FPN's input widths, nothing else), without `init_weights()` (that would fetch
ImageNet weights), then loads the orchestrator's `weights.pth` with strict=True: the same
tensors as our side. What a timed call does, through MMDetection's own entry points:
  train    `model.train_step(data, optim_wrapper)`: its data preprocessor (BGR->RGB,
           normalise, pad to 32), forward, losses, `parse_losses`, backward, SGD step
           (an `OptimWrapper` around the same torch SGD as our side)
  predict  `model.test_step(data)` under `torch.no_grad()`: its data preprocessor, forward and
           post-processing, boxes rescaled to the original image (scale factor 1 here)
`data` holds the uint8 images (the same pixels, in the BGR order its preprocessor expects) and
`DetDataSample`s with the image shape, the scale factor and, for training, the GT boxes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver_common import cpu_model, load_inputs, serve, thread_env  # noqa: E402

LR = 1e-4   # as on our side (bench/atss_driver.py)
CONFIG = Path(".mim") / "configs" / "atss" / "atss_r50_fpn_1x_coco.py"
FPN_IN = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
          101: [256, 512, 1024, 2048]}


def build_model(depth: int, num_classes: int):
    import mmdet
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.depth = depth
    cfg.model.neck.in_channels = FPN_IN[depth]
    cfg.model.bbox_head.num_classes = num_classes
    return MODELS.build(cfg.model)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--num-classes", type=int, default=80)
    args = ap.parse_args(argv)
    thread_env(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    import mmcv
    import mmdet
    import mmengine
    from mmdet.structures import DetDataSample
    from mmengine.optim import OptimWrapper
    from mmengine.structures import InstanceData

    t0 = time.perf_counter()
    images, targets = load_inputs(args.inputs)
    # Its preprocessor turns BGR into RGB (bgr_to_rgb=True), so it gets BGR: the network then sees
    # the very pixels our side sees.
    bgr = torch.from_numpy(images[:, ::-1].copy())
    h, w = bgr.shape[-2:]
    state = torch.load(Path(args.inputs) / "weights.pth", map_location="cpu", weights_only=True)["state_dict"]

    def build(train: bool):
        model = build_model(args.depth, args.num_classes)
        model.load_state_dict(state, strict=True)
        return model.train(train)

    def data_of(batch: int, with_gt: bool) -> dict:
        samples = []
        for i in range(batch):
            s = DetDataSample(metainfo={"img_shape": (int(h), int(w)), "ori_shape": (int(h), int(w)),
                                        "scale_factor": (1.0, 1.0), "img_id": i})
            if with_gt:
                s.gt_instances = InstanceData(
                    bboxes=torch.tensor(targets["boxes"][i], dtype=torch.float32).reshape(-1, 4),
                    labels=torch.tensor(targets["labels"][i], dtype=torch.int64))
            samples.append(s)
        return {"inputs": [bgr[i] for i in range(batch)], "data_samples": samples}

    predictor = build(False)

    def make_train(batch: int):
        model = build(True)
        params = [p for p in model.parameters() if p.requires_grad]
        wrapper = OptimWrapper(torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4))
        data = data_of(batch, True)

        def step():
            model.train_step(data, wrapper)
            return None
        return step

    def make_predict(batch: int):
        data = data_of(batch, False)

        def predict():
            with torch.no_grad():
                out = predictor.test_step(data)
            return [int(len(s.pred_instances)) for s in out]
        return predict

    def check(batch: int) -> dict:
        model = build(True)
        data = model.data_preprocessor(data_of(batch, True), True)
        with torch.no_grad():
            losses = model.loss(data["inputs"], data["data_samples"])
        flat = {k: float(sum(v) if isinstance(v, (list, tuple)) else v) for k, v in losses.items()}
        return {"losses": flat, "dets": make_predict(batch)()}

    ready = {"side": "mmdet", "versions": {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__,
                                           "mmengine": mmengine.__version__, "torch": torch.__version__,
                                           "python": platform.python_version()},
             "threads": torch.get_num_threads(), "cpu": cpu_model(), "setup_s": time.perf_counter() - t0}
    serve(ready, {"train": make_train, "predict": make_predict}, check)


if __name__ == "__main__":
    main()
