"""`atss eval` and the training loop's evaluation: a model or a checkpoint over a split, scored.

Public API (nothing here prints; the CLI does):

    evaluate(model, cache, *, device, batch_size=1, workers=2, scale=(1333, 800),
             evaluator="faster-coco-eval", per_class=False, results_path=None, amp=None,
             distributed=None, progress=None) -> dict
        The one call for the CLI and the training loop: builds the test loader of `cache`
        (a `atss_cli.data.CocoCache`), runs inference, writes the detections JSON atomically
        to `results_path` when given, evaluates against `cache.ann_file`. Distributed
        (torch.distributed initialised and `distributed` not False): every rank must call it;
        each infers its share, rank 0 writes the file and runs COCOeval, and every rank
        returns the same metrics. `distributed=False` evaluates the whole split in this
        process alone (e.g. rank 0 only, while the other ranks wait).
        The returned dict also holds "num_images" and "num_detections" (ints) and
        "seconds_inference", "seconds_eval" (floats).

    evaluate_checkpoint(checkpoint, coco=None, *, split="val2017", ann=None, images=None, cache_dir=None,
                        model_overrides=None, device="auto", batch_size=1, workers=2, scale=None,
                        evaluator="faster-coco-eval", per_class=False, results_path=None,
                        amp=None, progress=None) -> dict
        `atss eval` as a function: model from the checkpoint (class count from the split's
        categories, architecture from the checkpoint config / flags / R50 defaults, see
        atss_cli.inference.checkpoint), then `evaluate`. In a process started by
        torch.distributed.run (WORLD_SIZE > 1) it joins the group itself
        (atss_cli.distributed.group.init_from_env) and leaves it at the end. The dataset is
        `coco` + `split`, or any COCO-format JSON `ann` with its image folder `images`
        (atss_cli.data.cache.open_dataset); the same holds for the two functions below.

    eval_ground_truth(cache) -> dict                         (ground_truth.py)
        What COCOeval scores against: the JSON with missing "area" / "iscrowd" / "id" filled
        in and the annotations and categories the data pipeline drops left out.

    evaluate_detections_file(detections, coco=None, *, split="val2017", ann=None, images=None, cache_dir=None,
                             evaluator="faster-coco-eval", per_class=False) -> dict
        `atss eval --detections FILE`: scores an existing COCO results file (ours, or
        MMDetection's `.bbox.json`) without a model. `load_detections(path)` reads and checks one.

    check_eval_inputs(checkpoint, coco=None, *, split="val2017", ann=None, images=None, cache_dir=None,
                      model_overrides=None)
        The launching process of `atss eval --gpus N` checks split, checkpoint and model once
        (one clear error instead of N) before starting the workers.

    check_coverage(seen_image_ids, expected_image_ids) -> None   (used by evaluate)
        RuntimeError when inference missed an image of the split or saw a foreign one.

The pieces: gather.py (this rank's share, all ranks' shares, COCO result records),
cocoeval.py (COCOeval), ground_truth.py (the JSON COCOeval reads).

`progress` is an optional callable `progress(done_images, total_images)` called on rank 0
after every batch, so the CLI can draw a progress bar without this module printing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from atss_cli.data.coco_results import write_json_atomic
from atss_cli.errors import AtssError
from atss_cli.evaluation.cocoeval import check_evaluator, coco_evaluate
from atss_cli.evaluation.gather import dist_active, gather_packed, infer_packed, packed_to_detections
from atss_cli.evaluation.ground_truth import eval_ground_truth


def check_coverage(seen: set[int] | Sequence[int], expected: Sequence[int]) -> None:
    """Every image of the split inferred once: a loader that lost images is a bug, not a score."""
    missing = set(int(i) for i in expected) - set(int(i) for i in seen)
    extra = set(int(i) for i in seen) - set(int(i) for i in expected)
    if missing or extra:
        raise RuntimeError(f"inference covered the split wrongly: {len(missing)} images missing, "
                           f"{len(extra)} unknown (e.g. {sorted(missing or extra)[0]})")


def evaluate(model, cache, *, device, batch_size: int = 1, workers: int = 2,
             scale: tuple[int, int] = (1333, 800), evaluator: str = "faster-coco-eval",
             per_class: bool = False, results_path: str | Path | None = None,
             amp: str | None = None, distributed: bool | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Inference over `cache`'s split + COCOeval (see the module docstring)."""
    from atss_cli.data import build_test_loader

    check_evaluator(evaluator)
    dist_on = dist_active(distributed)
    if dist_on:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    loader = build_test_loader(cache, batch_size=batch_size, world_size=world, rank=rank,
                               workers=workers, scale=tuple(scale))
    t0 = time.perf_counter()
    share = -(-int(cache.num_images) // world)
    packed = infer_packed(model, loader, device, amp=amp, progress=progress if rank == 0 else None,
                          total=share)
    if dist_on:
        packed = gather_packed(packed)
    t_infer = time.perf_counter() - t0

    metrics = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            check_coverage(packed.keys(), cache.image_ids)
            detections = packed_to_detections(packed, cache.label_to_cat_id)
            if results_path is not None:
                write_json_atomic(results_path, detections)
            t1 = time.perf_counter()
            metrics = coco_evaluate(eval_ground_truth(cache), detections, evaluator=evaluator,
                                    per_class=per_class, categories=cache.categories)
            metrics.update(num_images=len(packed), num_detections=len(detections),
                           seconds_inference=t_infer, seconds_eval=time.perf_counter() - t1)
        except BaseException as exc:  # the other ranks wait on the broadcast below: tell them
            if not dist_on:
                raise
            failure = exc
            metrics = {"error": f"{type(exc).__name__}: {exc}"}
    if dist_on:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
        if failure is not None:
            raise failure
        if "error" in metrics:
            raise RuntimeError(f"evaluation failed on rank 0: {metrics['error']}")
    return metrics


def open_dataset(coco, split, ann, images, cache_dir):
    """The split's CocoCache: `coco` + `split`, or the JSON `ann` with its image folder `images`."""
    from atss_cli.data.cache import open_dataset as open_cache

    return open_cache(coco=Path(coco) if coco is not None else None, split=split,
                      ann=Path(ann) if ann is not None else None,
                      images=Path(images) if images is not None else None,
                      cache_dir=Path(cache_dir) if cache_dir else None)


def evaluate_checkpoint(checkpoint: str | Path, coco: str | Path | None = None, *, split: str = "val2017",
                        ann: str | Path | None = None, images: str | Path | None = None,
                        cache_dir: str | Path | None = None, model_overrides: dict | None = None,
                        device: str = "auto", batch_size: int = 1, workers: int = 2,
                        scale: tuple[int, int] | None = None, evaluator: str = "faster-coco-eval",
                        per_class: bool = False, results_path: str | Path | None = None,
                        amp: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """`atss eval` as a function: checkpoint + COCO split -> metrics (see `evaluate`).

    In a process started by torch.distributed.run (WORLD_SIZE > 1 in the environment) it
    joins the process group first (NCCL on CUDA, gloo on CPU), each rank on its own device,
    and leaves it at the end; every rank returns the metrics. `scale` None takes the
    checkpoint config's scale, else (1333, 800). The result also holds "checkpoint",
    "split", "scale", "model" (the build_atss fields used), "results" (the file written or
    None), "device" and "world_size".
    """
    import torch

    from atss_cli.device import resolve_device
    from atss_cli.distributed import group as distributed
    from atss_cli.inference.checkpoint import load_detector, read_checkpoint_info

    check_evaluator(evaluator)
    if batch_size < 1 or workers < 0:
        raise AtssError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    dev = resolve_device(device)
    info_ckpt = read_checkpoint_info(checkpoint)
    dist_info = distributed.init_from_env(dev.type)
    try:
        if dev.type == "cuda" and dist_info.enabled:
            dev = torch.device("cuda", dist_info.local_rank)
        cache = open_dataset(coco, split, ann, images, cache_dir)
        loaded = load_detector(checkpoint, num_classes=cache.num_classes, device=dev, overrides=model_overrides,
                               scale=scale, info=info_ckpt)
        use_scale = loaded.scale
        metrics = evaluate(loaded.model, cache, device=dev, batch_size=batch_size, workers=workers, scale=use_scale,
                           evaluator=evaluator, per_class=per_class, results_path=results_path, amp=amp,
                           progress=progress)
        metrics.update(checkpoint=str(checkpoint), split=split if coco is not None else None,
                       ann_file=str(cache.ann_file), scale=list(use_scale),
                       model=loaded.fields,
                       results=str(results_path) if results_path is not None else None,
                       device=str(dev), world_size=dist_info.world_size)
        return metrics
    finally:
        distributed.shutdown()


def check_eval_inputs(checkpoint: str | Path, coco: str | Path | None = None, *, split: str = "val2017",
                      ann: str | Path | None = None, images: str | Path | None = None,
                      cache_dir: str | Path | None = None, model_overrides: dict | None = None) -> None:
    """What `evaluate_checkpoint` would trip over, checked once in the launching process before
    N processes start: the split (its cache is built here, once), the checkpoint, the model it
    builds (on the CPU) and the class count. Raises AtssError; returns nothing."""
    from atss_cli.inference.checkpoint import load_detector, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    cache = open_dataset(coco, split, ann, images, cache_dir)
    load_detector(checkpoint, num_classes=cache.num_classes, device="cpu", overrides=model_overrides, info=info)


def load_detections(path: str | Path) -> list[dict]:
    """A COCO results file (a JSON list of {"image_id", "category_id", "bbox", "score"}), checked."""
    import json

    path = Path(path)
    if not path.is_file():
        raise AtssError(f"detections file not found: {path}")
    try:
        with open(path) as f:
            records = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AtssError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(records, list):
        raise AtssError(f"{path}: expected a JSON list of COCO results, got a {type(records).__name__}")
    for i, r in enumerate(records):
        ok = (isinstance(r, dict) and isinstance(r.get("image_id"), int) and isinstance(r.get("category_id"), int)
              and isinstance(r.get("score"), (int, float)) and isinstance(r.get("bbox"), list)
              and len(r["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in r["bbox"]))
        if not ok:
            raise AtssError(f"{path}: record {i} is not a COCO box result "
                            f"({{\"image_id\", \"category_id\", \"bbox\": [x, y, w, h], \"score\"}}): "
                            f"{json.dumps(r)[:120]}")
    return records


def evaluate_detections_file(detections: str | Path, coco: str | Path | None = None, *, split: str = "val2017",
                             ann: str | Path | None = None, images: str | Path | None = None,
                             cache_dir: str | Path | None = None, evaluator: str = "faster-coco-eval",
                             per_class: bool = False) -> dict:
    """`atss eval --detections FILE`: score an existing results file against the split's annotations.

    Category ids must be the annotation file's. Returns `coco_evaluate`'s dict plus
    "num_images", "num_detections", "seconds_eval", "split", "results" (the file)."""
    check_evaluator(evaluator)
    cache = open_dataset(coco, split, ann, images, cache_dir)
    records = load_detections(detections)
    known = {int(c["id"]) for c in cache.categories}
    unknown = {r["category_id"] for r in records} - known
    if unknown:
        raise AtssError(f"{detections}: category id {sorted(unknown)[0]} is not in {cache.ann_file.name}")
    t = time.perf_counter()
    metrics = coco_evaluate(eval_ground_truth(cache), records, evaluator=evaluator, per_class=per_class,
                            categories=cache.categories)
    metrics.update(num_images=cache.num_images, num_detections=len(records),
                   seconds_eval=time.perf_counter() - t, split=split if coco is not None else None,
                   ann_file=str(cache.ann_file), results=str(detections))
    return metrics
