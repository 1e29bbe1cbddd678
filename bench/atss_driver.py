"""Our side of `bench/side_by_side.py`, one process per side (protocol: bench/driver_common.py).

    python bench/atss_driver.py --side atss --inputs DIR --threads 2 [--depth 50]
    python bench/atss_driver.py --side onnxruntime --inputs DIR --threads 2

What a timed call does (MMDetection's driver does the same work on its side):
  train    the uint8 RGB batch -> normalise -> forward -> losses -> backward -> SGD step
  predict  the uint8 RGB batch -> normalise -> forward -> post-processing (boxes in the
           original image); with ONNX Runtime that is one `session.run` of the exported graph,
           which normalises and post-processes inside.
The images are already at the network's size (no resize on any side: the exported graph leaves
the resize out, so it is left out everywhere). The onnxruntime side never imports torch.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver_common import cpu_model, load_inputs, serve, thread_env  # noqa: E402

LR = 1e-4   # small: the same batch is stepped on many times; the time does not depend on it


def atss_side(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from atss_cli import __version__
    from atss_cli.data.transforms import normalize
    from atss_cli.model import build_atss, load_checkpoint

    t0 = time.perf_counter()
    images, targets = load_inputs(args.inputs)
    images = torch.from_numpy(images)
    h, w = images.shape[-2:]

    def build(train: bool):
        model = build_atss(num_classes=args.num_classes, depth=args.depth)
        load_checkpoint(model, str(Path(args.inputs) / "weights.pth"))
        return model.train(train)

    def targets_of(batch: int) -> list[dict]:
        return [{"boxes": torch.tensor(targets["boxes"][i], dtype=torch.float32).reshape(-1, 4),
                 "labels": torch.tensor(targets["labels"][i], dtype=torch.int64),
                 "img_shape": (int(h), int(w))} for i in range(batch)]

    predictor = build(False)

    def make_train(batch: int):
        model = build(True)   # its own copy: the predictor keeps the loaded weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4)
        batch_images, batch_targets = images[:batch], targets_of(batch)

        def step():
            losses = model.loss(normalize(batch_images), batch_targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return None
        return step

    def make_predict(batch: int):
        batch_images = images[:batch]
        shapes, factors = [(int(h), int(w))] * batch, [(1.0, 1.0)] * batch

        def predict():
            with torch.no_grad():
                dets = predictor.predict(normalize(batch_images), shapes, factors)
            return [int(d["scores"].numel()) for d in dets]
        return predict

    def check(batch: int) -> dict:
        model = build(True)
        with torch.no_grad():
            losses = model.loss(normalize(images[:batch]), targets_of(batch))
        return {"losses": {k: float(v) for k, v in losses.items()}, "dets": make_predict(batch)()}

    ready = {"side": "atss", "versions": {"atss": __version__, "torch": torch.__version__,
                                          "python": platform.python_version()},
             "threads": torch.get_num_threads(), "cpu": cpu_model(), "setup_s": time.perf_counter() - t0}
    serve(ready, {"train": make_train, "predict": make_predict}, check)


def _ort_feeds(session, images, batch: int) -> dict:
    """The exported graph's inputs: the uint8 batch, each image's (h, w) before padding and its
    scale factor (1: no resize here). Names and dtypes are read from the graph."""
    import numpy as np

    h, w = images.shape[-2:]
    feeds = {}
    for inp in session.get_inputs():
        dtype = {"tensor(uint8)": np.uint8, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                 "tensor(float)": np.float32, "tensor(double)": np.float64}.get(inp.type)
        if dtype is None:
            raise ValueError(f"unexpected input {inp.name} of type {inp.type}")
        if len(inp.shape) == 4:
            feeds[inp.name] = np.ascontiguousarray(images[:batch]).astype(dtype, copy=False)
        elif "scale" in inp.name:
            feeds[inp.name] = np.ones((batch, 2), dtype=dtype)
        else:
            feeds[inp.name] = np.tile(np.array([[h, w]], dtype=dtype), (batch, 1))
    return feeds


def _ort_detections(session, outputs, batch: int) -> list[int]:
    """Detections per image from the outputs: a per-image count output when there is one, else
    a [B, K] scores output with padding marked by a negative or zero score, else a flat list
    with a batch index."""
    import numpy as np

    names = [o.name for o in session.get_outputs()]
    by_name = dict(zip(names, outputs))
    for name, value in by_name.items():
        if ("num" in name or "count" in name) and np.asarray(value).shape[:1] == (batch,):
            return [int(v) for v in np.asarray(value).reshape(batch, -1)[:, 0]]
    for name, value in by_name.items():
        if "batch" in name or "index" in name:
            idx = np.asarray(value).reshape(-1)
            return [int((idx == i).sum()) for i in range(batch)]
    for name, value in by_name.items():
        if "score" in name:
            s = np.asarray(value)
            if s.ndim == 2 and s.shape[0] == batch:
                return [int((row > 0).sum()) for row in s]
            return [int(s.size)] if batch == 1 else [-1] * batch
    return [-1] * batch


def onnxruntime_side(args) -> None:
    import numpy as np
    import onnxruntime as ort

    t0 = time.perf_counter()
    images, _ = load_inputs(args.inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = Path(args.inputs) / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def make_predict(batch: int):
        feeds = _ort_feeds(session, images, batch)

        def predict():
            return _ort_detections(session, session.run(None, feeds), batch)
        return predict

    def check(batch: int) -> dict:
        return {"losses": None, "dets": make_predict(batch)()}

    opset = None
    try:
        import onnx

        opset = max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx"))
    except Exception:  # onnx is optional here: the runtime alone must run the file
        pass
    ready = {"side": "onnxruntime",
             "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__, "opset": opset,
                          "python": platform.python_version(),
                          "torch_imported": "torch" in sys.modules},
             "threads": args.threads, "cpu": cpu_model(), "setup_s": time.perf_counter() - t0}
    serve(ready, {"predict": make_predict}, check)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("atss", "onnxruntime"), required=True)
    ap.add_argument("--inputs", required=True, help="folder written by side_by_side.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--num-classes", type=int, default=80)
    args = ap.parse_args(argv)
    thread_env(args.threads)
    (atss_side if args.side == "atss" else onnxruntime_side)(args)


if __name__ == "__main__":
    main()
