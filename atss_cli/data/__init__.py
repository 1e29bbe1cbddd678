"""The COCO data pipeline: prepare and cache a split, datasets, transforms, samplers, loaders.

Contract (issue 4; the engine codes against these names):

    prepare_split(coco_root: Path, split: str, out_dir: Path | None = None, check_images=False,
                  workers=2, progress=None) -> dict
        Check `split` of a COCO 2017 folder (annotations/instances_{split}.json, {split}/),
        write `<coco_root>/{split}.txt` when absent and the cache when absent or stale; returns
        the report (see `atss_cli.data.prepare`). `out_dir`: cache root, default
        `<coco_root>/.atss_cache`. A second run writes nothing. `progress(done, total)` is
        called during --check-images decoding.

    load_split(coco_root: Path, split: str, cache_dir: Path | None = None) -> CocoCache
        The prepared split, building its cache when absent or stale (atomic, locked against
        concurrent builders). AtssError when the split is not there or its JSON is not COCO.

    prepare_ann(ann_file: Path, image_dir: Path, out_dir=None, name=None, check_images=False,
                workers=2, progress=None) -> dict
    load_ann(ann_file: Path, image_dir: Path, cache_dir=None) -> CocoCache
        The same for any COCO-format JSON and the folder its file_name values (sub-folders
        allowed) are relative to: category ids any integers >= 0, supercategory-only entries
        dropped (stats["dropped_categories"]). The cache and the image list go to
        `<cache_dir or .atss_cache beside the JSON>/<ann_cache_name(ann_file)>`.
    open_dataset(*, coco=None, split=None, ann=None, images=None, cache_dir=None) -> CocoCache
        Either of the two, as the command-line options name it.
    draw_training_images(cache, n, out_dir) -> dict    (`atss prepare --draw N`)

    CocoCache: num_images, image_ids (int64 [N]), heights, widths (int32 [N], from the JSON),
        file_names (sequence of str), file_name(i), image_path(i), image_dir, ann_file, split,
        boxes(i) float32 [M, 4] xyxy and labels(i) int64 [M] (non-crowd usable boxes,
        contiguous labels), crowd_boxes(i), train_indices() (int64; SPEC.md section 5 filter),
        landscape(indices=None) (bool, w >= h), categories ([{"id", "name"}] in label order),
        label_to_cat_id (int64 [C]), cat_id_to_label (dict), num_classes, stats.
        Arrays are memory-mapped; it pickles as its paths.

    generate_synthetic(out_dir: Path, train_images=400, val_images=50, seed=0, size=320) -> dict
        A small shapes dataset in the COCO layout (4 classes, ids 1, 2, 3, 5), with crowd,
        degenerate, ignored, outside and unknown-category annotations in train2017.

    transforms.test_input(path_or_bgr, scale=(1333, 800)) -> (input, img_shape, (sx, sy))
    transforms.train_input(path_or_bgr, boxes, flip, scale=(1333, 800)) -> (..., boxes)
        MMDetection 3.3.0's test / train pipeline and data preprocessor, bit for bit (OpenCV
        decode with EXIF orientation applied, cv2.resize INTER_LINEAR, flip, normalise, zero
        padding to 32): the one path evaluation, prediction and training take.
        tests/test_pipeline_parity.py holds it to MMDetection's own tensors.
    transforms.train_pixels(...) -> (uint8 [3, h, w] RGB, img_shape, (sx, sy), boxes)
    transforms.normalize_padded(uint8 [B, 3, H, W], extents int64 [B, 2]) -> float32 [B, 3, H, W]
        train_input split where the batch crosses to the GPU: the loader sends uint8 pixels,
        the device normalises and zero-pads them, train_input's values bit for bit.

    TrainDataset(cache, scale=(1333, 800), flip_prob=0.5, max_corrupt=100, uint8_images=False)
    TestDataset(cache, scale=(1333, 800))
        Samples: {"image" float32 [3, h, w] normalised, "boxes", "labels", "img_shape",
        "ori_shape", "scale_factor" (sx, sy), "image_id", "index", "flipped", "skipped"}.
        JSON sizes and boxes are in the displayed (EXIF-applied) frame; a decoded size other
        than the JSON's makes a bad image (the reason names an EXIF-rotated photo whose JSON
        holds its stored size). Training replaces a bad image by the next good one
        (deterministic), names it in "skipped" and keeps the reason (`bad_images()`); more
        than max_corrupt bad files per process, or any bad file in the test set, raise
        CorruptImagesError (an AtssError). A sample whose boxes are not finite float32
        [M, 4] or whose labels are not int64 in 0..C-1 raises BadTargetsError (an AtssError,
        one line also from a worker) naming the image: the model trusts what the loader gives.

    collate(samples) -> {"images": float32 [B, 3, H, W] (zero-padded to a multiple of 32; uint8
                                    RGB, not normalised, from TrainDataset(uint8_images=True)),
                         "image_sizes": int64 [B, 2] (each image's (h, w)),
                         "targets": [{"boxes", "labels", "img_shape", "ori_shape",
                                      "scale_factor", "image_id"}, ...],
                         "skipped": [file names replaced in this batch],
                         "indices": [cache indices], "flipped": [bool]}

    GroupedGlobalBatchSampler(landscape, total_batch, *, world_size=1, rank=0, seed=0,
                              drop_last=False)
        len() = steps per epoch; set_epoch(e); set_position(e, step); state_dict() ->
        {"epoch", "step"}; load_state_dict(d). Yields lists of (position, augmentation seed).
    TestShardSampler(num_images, batch_size=1, *, world_size=1, rank=0)

    build_train_loader(cache, *, batch_per_rank, world_size=1, rank=0, seed=0, workers=2,
                       scale=(1333, 800), flip_prob=0.5, max_corrupt=100, drop_last=False,
                       pin_memory=False, uint8_images=False) -> (DataLoader, GroupedGlobalBatchSampler)
    build_test_loader(cache, *, batch_size=1, world_size=1, rank=0, workers=2,
                      scale=(1333, 800), pin_memory=False) -> DataLoader

Names are imported on first use, so `import atss_cli.data` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "prepare_split": "prepare", "check_image_files": "prepare", "prepare_ann": "prepare",
    "draw_training_images": "prepare",
    "load_split": "cache", "CocoCache": "cache", "load_ann": "cache", "open_dataset": "cache",
    "generate_synthetic": "synthetic",
    "TrainDataset": "dataset", "TestDataset": "dataset", "collate": "dataset", "CorruptImagesError": "dataset",
    "BadTargetsError": "dataset", "check_sample_targets": "dataset",
    "GroupedGlobalBatchSampler": "sampler", "TestShardSampler": "sampler",
    "build_train_loader": "loader", "build_test_loader": "loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"atss_cli.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atss_cli.data' has no attribute {name!r}")
