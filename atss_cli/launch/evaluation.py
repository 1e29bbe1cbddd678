"""`atss eval` as a function: the request checked once, then scored here or in N processes.

    evaluation_request(*, checkpoint=None, detections=None, coco=None, split=None, ann=None,
                       images=None, ...) -> EvalRequest
        The options checked against each other (one dataset form, one source of detections),
        the default results file and the table's title filled in.
    run_evaluation(request, processes=Processes(), *, progress=None) -> dict | None
        One process: the metrics (the caller prints them). Several (`processes.gpus`, or
        `processes.nproc` on the CPU): the request is written to a launch file and every
        process started by torchrun runs `evaluate_as_rank` on it (worker.py), as training's
        workers run its launch_config.json; rank 0 prints the table; returns None.
    evaluate_as_rank(request, *, progress=None) -> dict
        What each process (or the only one) computes: `evaluate_checkpoint`, `evaluate_onnx` or
        `evaluate_detections_file`; inside torchrun every rank joins the group itself.
    analyze_evaluation(request, metrics) -> dict | None
        With `request.analyze`: atss_cli.evaluation.analysis over the detections just scored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atss_cli.errors import AtssError, param
from atss_cli.launch.plan import Processes, process_plan


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: str | None = None       # run this model ...
    onnx: str | None = None             # ... or this `atss export` file on ONNX Runtime (one CPU process)
    detections: str | None = None       # ... or score this COCO results file
    coco: str | None = None             # the dataset: a COCO root and its split ...
    split: str = "val2017"
    ann: str | None = None              # ... or any COCO-format JSON with its image folder
    images: str | None = None
    cache_dir: str | None = None
    model_overrides: dict = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 1
    workers: int = 2
    scale: tuple[int, int] | None = None
    evaluator: str = "faster-coco-eval"
    per_class: bool = False
    results: str | None = None          # where the detections are written (checkpoint runs)
    amp: str | None = None
    json_out: str | None = None         # the metrics as JSON too
    analyze: str | None = None          # the error analysis (atss_cli.evaluation.analysis) goes here
    title: str = "COCO bbox"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> "EvalRequest":
        data = json.loads(Path(path).read_text())
        if data.get("scale") is not None:
            data["scale"] = tuple(data["scale"])
        return cls(**data)


def evaluation_request(*, checkpoint=None, onnx=None, detections=None, coco=None, split: str | None = None, ann=None,
                       images=None, cache_dir=None, model_overrides: dict | None = None, device: str = "auto",
                       batch_size: int = 1, workers: int = 2, scale: tuple[int, int] | None = None,
                       evaluator: str = "faster-coco-eval", per_class: bool = False, results=None,
                       amp: str | None = None, json_out=None, analyze=None) -> EvalRequest:
    from atss_cli.evaluation.cocoeval import check_evaluator

    check_evaluator(evaluator)
    if coco is not None and (ann is not None or images is not None):
        raise AtssError(f"give either {param('coco')} ROOT or {param('ann')} FILE {param('images')} DIR, not both")
    if coco is None:
        if ann is None and images is None:
            raise AtssError(f"give {param('coco')} ROOT, or {param('ann')} FILE with {param('images')} DIR")
        if images is None:
            raise AtssError(f"{param('ann')} needs {param('images')} DIR too")
        if ann is None:
            raise AtssError(f"{param('images')} needs {param('ann')} FILE too")
        if split is not None:
            raise AtssError(f"{param('split')} is for {param('coco')}; with {param('ann')} the annotation file "
                            "is the split")
        from atss_cli.data.cache import check_ann

        check_ann(Path(ann), Path(images))
    split = "val2017" if split is None else split.strip()
    if not split or "/" in split:
        raise AtssError(f"{param('split')} {split!r}: expected a split name like val2017")
    # What the results file and the table are named after: the split, or the annotation file.
    ann_name = Path(ann).name if ann is not None else ""
    set_name = split if coco is not None else (ann_name[:-5] if ann_name.endswith(".json") else ann_name)
    if sum(x is not None for x in (checkpoint, onnx, detections)) != 1:
        raise AtssError(f"give {param('checkpoint')} CKPT or {param('onnx')} FILE (run a model) or "
                        f"{param('detections')} FILE (score a results file), one of them")
    if analyze is not None and Path(analyze).exists() and not Path(analyze).is_dir():
        raise AtssError(f"{param('analyze')} {analyze} is a file; give a folder for the analysis")
    source = Path(next(x for x in (checkpoint, onnx, detections) if x is not None))
    runs_model = detections is None
    if runs_model:
        results = Path(results) if results is not None else Path.cwd() / f"{source.stem}.{set_name}.bbox.json"
        results = results.resolve()
        for out in (results, json_out):
            if out is not None and Path(out).exists() and Path(out).is_dir():
                raise AtssError(f"{out} is a folder; give a file path")
    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    return EvalRequest(
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        onnx=str(onnx) if onnx is not None else None,
        detections=str(detections) if detections is not None else None,
        coco=str(coco) if coco is not None else None, split=split,
        ann=str(ann) if ann is not None else None, images=str(images) if images is not None else None,
        cache_dir=str(cache_dir) if cache_dir is not None else None, model_overrides=overrides,
        device=device, batch_size=batch_size, workers=workers, scale=tuple(scale) if scale else None,
        evaluator=evaluator, per_class=per_class, results=str(results) if runs_model else None,
        amp=None if amp in (None, "none") else amp, json_out=str(json_out) if json_out is not None else None,
        analyze=str(analyze) if analyze is not None else None, title=f"COCO bbox: {source.name} on {set_name}")


def run_evaluation(request: EvalRequest, processes: Processes = Processes(), *,
                   progress: Callable[[int, int], None] | None = None) -> dict | None:
    if request.onnx is not None and (processes.gpus is not None or processes.nproc != 1):
        raise AtssError(f"{param('onnx')} runs in one process on the CPU; drop {param('gpus')} / {param('nproc')}")
    if request.detections is not None or request.onnx is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A results file is scored in this process; inside torchrun this process is one rank.
        return evaluate_as_rank(request, progress=progress)
    procs, device = process_plan(processes.gpus, processes.nproc, processes.device)
    request = dataclasses.replace(request, device=device)
    if procs == 1:
        return evaluate_as_rank(request, progress=progress)

    import shutil
    import tempfile

    from atss_cli.atomic import atomic_write_text
    from atss_cli.evaluation.evaluate import check_eval_inputs
    from atss_cli.launch.torchrun import launch

    check_eval_inputs(request.checkpoint, request.coco, split=request.split, ann=request.ann,
                      images=request.images, cache_dir=request.cache_dir, model_overrides=request.model_overrides)
    folder = tempfile.mkdtemp(prefix="atss-eval-")
    try:
        path = Path(folder) / "eval_request.json"
        atomic_write_text(path, request.to_json() + "\n")
        launch("atss_cli.launch.worker", ["--eval", str(path)], nproc=procs, what="evaluation")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def evaluate_as_rank(request: EvalRequest, *, progress: Callable[[int, int], None] | None = None) -> dict:
    from atss_cli.evaluation.evaluate import evaluate_checkpoint, evaluate_detections_file

    r = request
    if r.onnx is not None:
        from atss_cli.evaluation.onnx import evaluate_onnx

        metrics = evaluate_onnx(r.onnx, r.coco, split=r.split, ann=r.ann, images=r.images, cache_dir=r.cache_dir,
                                evaluator=r.evaluator, per_class=r.per_class, results_path=r.results,
                                progress=progress)
    elif r.detections is not None:
        metrics = evaluate_detections_file(r.detections, r.coco, split=r.split, ann=r.ann, images=r.images,
                                           cache_dir=r.cache_dir, evaluator=r.evaluator, per_class=r.per_class)
    else:
        metrics = evaluate_checkpoint(
            r.checkpoint, r.coco, split=r.split, ann=r.ann, images=r.images, cache_dir=r.cache_dir,
            model_overrides=r.model_overrides or None, device=r.device, batch_size=r.batch_size,
            workers=r.workers, scale=r.scale, evaluator=r.evaluator, per_class=r.per_class,
            results_path=r.results, amp=r.amp, progress=progress)
    if r.json_out is not None and int(os.environ.get("RANK", "0")) == 0:
        from atss_cli.data.coco_results import write_json_atomic

        write_json_atomic(r.json_out, metrics, indent=2)
    return metrics


def analyze_evaluation(request: EvalRequest, metrics: dict) -> dict | None:
    """`request.analyze`: the error analysis of the detections just scored, against the ground
    truth COCOeval scored them on; None without it. Rank 0 only (the caller's rule)."""
    if request.analyze is None:
        return None
    from atss_cli.evaluation.analysis import analyze
    from atss_cli.evaluation.evaluate import open_dataset
    from atss_cli.evaluation.ground_truth import eval_ground_truth

    r = request
    cache = open_dataset(r.coco, r.split, r.ann, r.images, r.cache_dir)
    name = r.title.rsplit(" on ", 1)[-1]
    return analyze(eval_ground_truth(cache), metrics["results"], Path(r.analyze),
                   images_dir=cache.image_dir if Path(cache.image_dir).is_dir() else None, name=name)
