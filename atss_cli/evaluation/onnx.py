"""`atss eval --onnx FILE`: COCO box AP of an exported detector on ONNX Runtime (CPU).

    evaluate_onnx(onnx, coco=None, *, split="val2017", ann=None, images=None, cache_dir=None,
                  evaluator="faster-coco-eval", per_class=False, results_path=None, threads=None,
                  progress=None) -> dict

Every image of the split, decoded as `atss predict` decodes it (atss_cli.data.transforms.read_image)
and run as a batch of one through `Detector.from_onnx` with no score threshold beyond the graph's
own, gives COCO result records; these are written to `results_path` when given and scored as
`evaluate` scores a checkpoint's. The file's class count must be the split's. One process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atss_cli.errors import AtssError


def evaluate_onnx(onnx: str | Path, coco: str | Path | None = None, *, split: str = "val2017",
                  ann: str | Path | None = None, images: str | Path | None = None,
                  cache_dir: str | Path | None = None, evaluator: str = "faster-coco-eval",
                  per_class: bool = False, results_path: str | Path | None = None, threads: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    from atss_cli.data.coco_results import pack_detections, write_json_atomic
    from atss_cli.data.transforms import read_image
    from atss_cli.evaluation.cocoeval import coco_evaluate
    from atss_cli.evaluation.evaluate import open_dataset
    from atss_cli.evaluation.gather import packed_to_detections
    from atss_cli.evaluation.ground_truth import eval_ground_truth
    from atss_cli.inference.detector import Detector

    cache = open_dataset(coco, split, ann, images, cache_dir)
    det = Detector.from_onnx(onnx, threads=threads)
    if len(det.class_names) != cache.num_classes:
        raise AtssError(f"{onnx}: the file detects {len(det.class_names)} classes, "
                        f"{cache.ann_file.name} has {cache.num_classes}")
    t0 = time.perf_counter()
    packed: dict[int, np.ndarray] = {}
    for i in range(cache.num_images):
        d = det.detect_bgr(read_image(cache.image_path(i)), score_thr=-1.0)
        packed[int(cache.image_ids[i])] = pack_detections(d.boxes, d.scores, d.labels)
        if progress is not None:
            progress(i + 1, cache.num_images)
    t_infer = time.perf_counter() - t0
    detections = packed_to_detections(packed, cache.label_to_cat_id)
    if results_path is not None:
        write_json_atomic(results_path, detections)
    t1 = time.perf_counter()
    metrics = coco_evaluate(eval_ground_truth(cache), detections, evaluator=evaluator, per_class=per_class,
                            categories=cache.categories)
    metrics.update(num_images=len(packed), num_detections=len(detections), seconds_inference=t_infer,
                   seconds_eval=time.perf_counter() - t1, onnx=str(onnx),
                   split=split if coco is not None else None, ann_file=str(cache.ann_file),
                   results=str(results_path) if results_path is not None else None)
    return metrics
