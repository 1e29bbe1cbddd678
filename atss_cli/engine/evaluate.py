"""COCO evaluation: inference over a split, COCO result records, COCOeval bbox metrics.

Public API (nothing here prints; the CLI does):

    run_inference(model, loader, device, *, label_to_cat_id, amp=None, distributed=None,
                  progress=None) -> list[dict]
        Runs `model.predict` over every batch of `loader` and returns COCO result records
        {"image_id", "category_id", "bbox": [x, y, w, h], "score"} in the original image frame,
        category ids mapped back through `label_to_cat_id` (sequence or mapping, label ->
        id). Sorted by image id, then descending score. With torch.distributed initialised
        (and `distributed` not False) each rank infers the share its loader yields and the
        shares are all-gathered: every rank returns the same full list, and an image that
        two ranks saw (sampler padding) counts once. `amp`: None, "bf16" or "fp16".
        The model is put in eval mode and given back in the mode it came in.

    coco_evaluate(ann_file, detections, *, evaluator="faster-coco-eval", per_class=False,
                  categories=None) -> dict
        COCOeval bbox over every image of `ann_file` (a path or a loaded COCO dict). Returns
        the 12 standard numbers under METRIC_NAMES ("mAP", "mAP_50", "mAP_75", "mAP_s",
        "mAP_m", "mAP_l", "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l"), as floats;
        -1.0 where COCOeval has nothing to measure (no ground truth in that area range), as
        COCOeval itself reports it. With `per_class`, also "per_class": {category name: AP
        @[.5:.95]} (-1.0 for a category without ground truth). Empty `detections` give 0.
        `evaluator`: "faster-coco-eval" (default, C++) or "pycocotools" (the reference); both
        give the same numbers. COCOeval's own prints are swallowed.

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
        atss_cli.engine.inference), then `evaluate`. In a process started by
        torch.distributed.run (WORLD_SIZE > 1) it joins the group itself
        (atss_cli.engine.distributed.init_from_env) and leaves it at the end. The dataset is
        `coco` + `split`, or any COCO-format JSON `ann` with its image folder `images`
        (atss_cli.data.cache.open_dataset); the same holds for the two functions below.

    eval_ground_truth(cache) -> dict
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

`progress` is an optional callable `progress(done_images, total_images)` called on rank 0
after every batch, so the CLI can draw a progress bar without this module printing.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from atss_cli.engine.coco_results import label_lookup, pack_detections, packed_to_coco, write_json_atomic
from atss_cli.errors import AtssError

METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
                "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")
METRIC_TITLES = {
    "mAP": "AP @[IoU=.50:.95, area=all, maxDets=100]",
    "mAP_50": "AP @[IoU=.50, area=all, maxDets=100]",
    "mAP_75": "AP @[IoU=.75, area=all, maxDets=100]",
    "mAP_s": "AP @[IoU=.50:.95, area=small, maxDets=100]",
    "mAP_m": "AP @[IoU=.50:.95, area=medium, maxDets=100]",
    "mAP_l": "AP @[IoU=.50:.95, area=large, maxDets=100]",
    "AR_1": "AR @[IoU=.50:.95, area=all, maxDets=1]",
    "AR_10": "AR @[IoU=.50:.95, area=all, maxDets=10]",
    "AR_100": "AR @[IoU=.50:.95, area=all, maxDets=100]",
    "AR_s": "AR @[IoU=.50:.95, area=small, maxDets=100]",
    "AR_m": "AR @[IoU=.50:.95, area=medium, maxDets=100]",
    "AR_l": "AR @[IoU=.50:.95, area=large, maxDets=100]",
}
EVALUATORS = ("faster-coco-eval", "pycocotools")


def _dist_active(distributed: bool | None) -> bool:
    if distributed is False:
        return False
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not active:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    return active


def unwrap_model(model):
    # DistributedDataParallel / torch.compile wrappers keep the detector in `.module` / `._orig_mod`.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if inner is not None and hasattr(inner, "predict"):
            return inner
    return model


def amp_context(device, amp: str | None):
    import torch

    if amp in (None, "", "none", "fp32"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise AtssError(f"unknown amp mode {amp!r}; choose bf16 or fp16")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[amp])


def infer_packed(model, loader, device, *, amp: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 total: int | None = None) -> dict[int, np.ndarray]:
    """This process's share: {image_id: [K, 6] rows (x, y, w, h, score, label)}."""
    import torch

    device = torch.device(device)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    out: dict[int, np.ndarray] = {}
    if total is None:
        try:
            total = len(loader.dataset)
        except (AttributeError, TypeError):
            total = 0
    done = 0
    try:
        # no_grad, not inference_mode: tensors the model caches here (anchors) stay usable when
        # the training loop resumes after an evaluation.
        with torch.no_grad():
            for batch in loader:
                images = batch["images"].to(device, non_blocking=True)
                targets = batch["targets"]
                img_shapes = [tuple(t["img_shape"]) for t in targets]
                scale_factors = [tuple(t["scale_factor"]) for t in targets]
                with amp_context(device, amp):
                    dets = net.predict(images, img_shapes, scale_factors)
                for t, d in zip(targets, dets):
                    image_id = int(t["image_id"])
                    if image_id in out:  # a padded sampler repeated it: keep the first
                        continue
                    out[image_id] = pack_detections(d["boxes"], d["scores"], d["labels"])
                done += len(targets)
                if progress is not None:
                    progress(done, total)
    finally:
        net.train(was_training)
    return out


def gather_packed(local: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """All-gather every rank's {image_id: rows}; an image seen by several ranks counts once."""
    import torch.distributed as dist

    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, local)
    merged: dict[int, np.ndarray] = {}
    for share in shares:  # rank order: the lowest rank's copy of a repeated image wins
        for image_id, rows in share.items():
            merged.setdefault(image_id, rows)
    return merged


def packed_to_detections(packed: Mapping[int, np.ndarray],
                         label_to_cat_id: Mapping[int, int] | Sequence[int]) -> list[dict]:
    """{image_id: rows} -> COCO result records, by image id then descending score."""
    table = label_lookup(label_to_cat_id)
    detections: list[dict] = []
    for image_id in sorted(packed):
        rows = packed[image_id]
        if len(rows):
            rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        detections.extend(packed_to_coco(image_id, rows, table))
    return detections


def run_inference(model, loader, device, *, label_to_cat_id: Mapping[int, int] | Sequence[int],
                  amp: str | None = None, distributed: bool | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Inference over `loader` -> COCO result records (see the module docstring)."""
    packed = infer_packed(model, loader, device, amp=amp, progress=progress)
    if _dist_active(distributed):
        packed = gather_packed(packed)
    return packed_to_detections(packed, label_to_cat_id)


# ----------------------------------------------------------------------------- COCOeval

def _load_gt(ann_file, evaluator: str):
    if evaluator == "faster-coco-eval":
        from faster_coco_eval import COCO
    elif evaluator == "pycocotools":
        from pycocotools.coco import COCO
    else:
        raise AtssError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    if isinstance(ann_file, Mapping):
        gt = COCO()
        gt.dataset = dict(ann_file)
        gt.createIndex()
        return gt
    path = Path(ann_file)
    if not path.is_file():
        raise AtssError(f"annotation file not found: {path}")
    return COCO(str(path))


def _load_results(gt, detections: list[dict], evaluator: str):
    if detections:
        known = set(gt.getImgIds())
        stray = {d["image_id"] for d in detections} - known
        if stray:
            raise AtssError(f"{len(stray)} detection image ids are not in the annotation file "
                            f"(e.g. {sorted(stray)[0]})")
        # COCO.loadRes adds keys (area, id, segmentation) to the records it gets: give it copies.
        return gt.loadRes([dict(d) for d in detections])
    # An empty result set: pycocotools' loadRes cannot take one, so build the empty index.
    dt = type(gt)()
    dt.dataset = {"images": list(gt.dataset.get("images", [])), "annotations": [],
                  "categories": list(gt.dataset.get("categories", []))}
    dt.createIndex()
    return dt


def coco_evaluate(ann_file, detections: list[dict], *, evaluator: str = "faster-coco-eval",
                  per_class: bool = False, categories: Sequence[Mapping] | None = None) -> dict:
    """COCOeval bbox -> the 12 standard metrics (+ per-class AP); see the module docstring."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        gt = _load_gt(ann_file, evaluator)
        dt = _load_results(gt, detections, evaluator)
        if evaluator == "faster-coco-eval":
            from faster_coco_eval import COCOeval_faster

            coco_eval = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
        else:
            from pycocotools.cocoeval import COCOeval

            coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.imgIds = sorted(gt.getImgIds())
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = [float(s) for s in coco_eval.stats[:12]]
    metrics: dict = dict(zip(METRIC_NAMES, stats))
    if per_class:
        metrics["per_class"] = _per_class_ap(coco_eval, gt, categories)
    return metrics


def _per_class_ap(coco_eval, gt, categories) -> dict[str, float]:
    # precision: [T iou thresholds, R recall points, K categories, A areas, M maxDets]
    precision = np.asarray(coco_eval.eval["precision"])
    cat_ids = list(coco_eval.params.catIds)
    names = {int(c["id"]): str(c["name"]) for c in (categories or gt.dataset.get("categories", []))}
    out: dict[str, float] = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = names.get(int(cat_id), str(cat_id))
        if name in out:  # two categories of one name: the table keeps both
            name = f"{name} (id {int(cat_id)})"
        out[name] = float(p.mean()) if p.size else -1.0
    return out


def eval_ground_truth(cache) -> dict:
    """The COCOeval ground truth of `cache`'s annotation file, as a loaded COCO dict.

    A file from COCO itself passes unchanged. A hand-made or exported one may lack what
    COCOeval reads without a default: a missing "area" becomes the box's w * h (COCOeval's
    small / medium / large ranges read it), a missing "iscrowd" 0, a missing "id" a fresh one.
    Annotations the data pipeline skips as duplicate ids (COCOeval would read the last one
    twice), non-finite or negative-size boxes are left out, and so are categories it drops
    (supercategory-only entries), so the per-class table holds the classes the model knows.
    """
    from atss_cli.data.coco import load_json

    path = Path(cache.ann_file)
    with open(path, "rb") as f:
        data = load_json(path, f.read())
    kept_ids = {int(c["id"]) for c in cache.categories}
    anns, seen = [], set()
    next_id = 1 + max((a["id"] for a in data["annotations"]
                       if isinstance(a.get("id"), int) and not isinstance(a.get("id"), bool)), default=0)
    for a in data["annotations"]:
        ann_id = a.get("id")
        if ann_id is not None and ann_id != -1 and ann_id in seen:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
            continue
        a = dict(a)
        if ann_id is None or (ann_id == -1 and -1 in seen):  # absent ids read -1 in the pipeline
            a["id"], next_id = next_id, next_id + 1
        seen.add(a["id"])
        if a.get("area") is None:
            a["area"] = w * h
        a.setdefault("iscrowd", 0)
        anns.append(a)
    cats = [c for c in data["categories"] if int(c["id"]) in kept_ids]
    return {**{k: v for k, v in data.items() if k not in ("annotations", "categories")},
            "annotations": anns, "categories": cats}


# ----------------------------------------------------------------------------- top level

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

    if evaluator not in EVALUATORS:
        raise AtssError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    dist_on = _dist_active(distributed)
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


def _open(coco, split, ann, images, cache_dir):
    from atss_cli.data.cache import open_dataset

    return open_dataset(coco=Path(coco) if coco is not None else None, split=split,
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

    from atss_cli.engine import distributed
    from atss_cli.engine.device import resolve_device
    from atss_cli.engine.inference import (DEFAULT_SCALE, build_inference_model, model_fields,
                                           read_checkpoint_info)

    if evaluator not in EVALUATORS:
        raise AtssError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    if batch_size < 1 or workers < 0:
        raise AtssError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    dev = resolve_device(device)
    info_ckpt = read_checkpoint_info(checkpoint)
    dist_info = distributed.init_from_env(dev.type)
    try:
        if dev.type == "cuda" and dist_info.enabled:
            dev = torch.device("cuda", dist_info.local_rank)
        cache = _open(coco, split, ann, images, cache_dir)
        model = build_inference_model(checkpoint, num_classes=cache.num_classes, device=dev,
                                      overrides=model_overrides, info=info_ckpt)
        use_scale = tuple(scale) if scale else (info_ckpt.scale or DEFAULT_SCALE)
        metrics = evaluate(model, cache, device=dev, batch_size=batch_size, workers=workers, scale=use_scale,
                           evaluator=evaluator, per_class=per_class, results_path=results_path, amp=amp,
                           progress=progress)
        metrics.update(checkpoint=str(checkpoint), split=split if coco is not None else None,
                       ann_file=str(cache.ann_file), scale=list(use_scale),
                       model=model_fields(info_ckpt, model_overrides),
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
    from atss_cli.engine.inference import build_inference_model, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    cache = _open(coco, split, ann, images, cache_dir)
    build_inference_model(checkpoint, num_classes=cache.num_classes, device="cpu", overrides=model_overrides,
                          info=info)


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
    if evaluator not in EVALUATORS:
        raise AtssError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    cache = _open(coco, split, ann, images, cache_dir)
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
