"""The training configuration: one typed, frozen dataclass, read in one place.

Defaults are the 1x recipe of SPEC.md section 6 (ATSS R50-FPN, total batch 16, 12 epochs).
`--set key=value` on the command line overrides any field; values are parsed by the field's
type and unknown keys are rejected. The resolved config is written as JSON beside every run.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from atss_cli.errors import AtssError, param


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    coco: str = ""                       # COCO root: annotations/, train2017/, val2017/
    train_ann: str = ""                  # or any COCO-format JSON for training (instead of coco) ...
    train_images: str = ""               # ... and the folder its file_name values are relative to
    val_ann: str = ""                    # evaluated every eval_interval epochs ("" = none) ...
    val_images: str = ""                 # ... with its image folder
    train_split: str = "train2017"       # image folder and annotation suffix used for training
    val_split: str = "val2017"           # split evaluated every eval_interval epochs ("" = none)
    cache_dir: str = ""                  # annotation cache root ("" = <coco>/.atss_cache, or beside each JSON)
    scale: tuple[int, int] = (1333, 800)  # keep-ratio resize: fit inside (long, short)
    flip_prob: float = 0.5               # horizontal flip probability in training
    workers: int = 2                     # data loader processes per training process
    drop_last: bool = False              # True: drop each epoch's leftovers of the aspect groups (the rule before
                                         # MMDetection's, which joins them into batches, the last smaller)

    # --- model ---
    depth: int = 50                      # ResNet depth: 18, 34, 50 or 101
    fpn_channels: int = 256              # FPN output width
    head_channels: int = 256             # width of the shared head towers
    stacked_convs: int = 4               # conv-GN-ReLU blocks per head tower
    frozen_stages: int = 1               # 1 = stem and layer1 frozen; -1 = train everything
    norm_eval: bool = True               # backbone BatchNorm kept in eval mode (frozen stats)
    pretrained: str = ""                 # torchvision's IMAGENET1K_V1 ResNet file (or its folder); "" = torch hub cache
    from_scratch: bool = False           # random backbone init even where the config freezes stages or BN
    load_from: str = ""                  # start from this detector checkpoint (ours or MMDetection's)

    # --- schedule (SPEC.md section 6) ---
    epochs: int = 12                     # 1x schedule
    lr: float = 0.01                     # lr for base_batch images per iteration
    base_batch: int = 16                 # the total batch the recipe's lr belongs to
    scale_lr: bool = False               # scale lr by total_batch / base_batch
    batch_per_gpu: int = 2               # images per process and micro-step
    accumulate: int = 0                  # micro-steps per iteration; 0 = keep the total batch at base_batch
    momentum: float = 0.9
    weight_decay: float = 1e-4           # on all parameters, as MMDetection's ATSS config
    warmup_iters: int = 500              # MMEngine's LinearLR(begin=0, end=warmup_iters): 1.0 at warmup_iters - 1
    warmup_ratio: float = 0.001          # warmup starts at warmup_ratio * lr (LinearLR's start_factor)
    milestones: tuple[int, ...] = (8, 11)  # lr x 0.1 after these epochs
    max_iters: int = 0                   # stop after this many iterations (0 = full schedule)

    # --- run ---
    work_dir: str = "work_dirs/atss"     # checkpoints, logs, config, curves
    device: str = "auto"                 # auto, cpu or cuda
    amp: str = "none"                    # none, bf16 or fp16
    channels_last: bool = False          # NHWC convolutions: 15-25% faster training on CPU
    cuda_graphs: bool = False            # the whole step in CUDA graphs (training/graphs.py): one CUDA process,
                                         # accumulate 1, amp none or bf16
    graph_cache: int = 32                # CUDA graphs kept at most (one per padded batch shape and GT bucket)
    graph_box_buckets: tuple[int, ...] = (8, 16, 32, 64, 128)  # GT rows a graph pads to; more GTs run eager
    seed: int = 0                        # model init, data order and augmentation
    eval_interval: int = 1               # evaluate every this many epochs (0 = never)
    checkpoint_interval: int = 1         # keep an epoch_N.pth every this many epochs
    save_every_iters: int = 500          # also refresh latest.pth this often (a kill loses less)
    log_interval: int = 20               # iterations between log lines
    evaluator: str = "faster-coco-eval"  # or pycocotools
    max_bad_images: int = 100            # corrupt images skipped in training before giving up

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def assumes_imagenet(self) -> bool:
        """Frozen stages or frozen BatchNorm statistics only make sense on pretrained weights."""
        return self.frozen_stages >= 0 or self.norm_eval

    @property
    def model_kwargs(self) -> dict:
        """The build_atss keyword arguments this config describes (class count comes from the data)."""
        return dict(depth=self.depth, fpn_channels=self.fpn_channels, head_channels=self.head_channels,
                    stacked_convs=self.stacked_convs, frozen_stages=self.frozen_stages,
                    norm_eval=self.norm_eval)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _parse(name: str, raw: str):
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
        if origin is tuple:
            args = typing.get_args(hint)
            item = args[0]
            parts = [p for p in raw.replace("x", ",").split(",") if p.strip()]
            values = tuple(item(p.strip()) for p in parts)
            if args[-1] is not Ellipsis and len(values) != len(args):
                raise ValueError(raw)
            return values
    except ValueError:
        pass
    raise AtssError(f"{param('set')} {name}={raw}: not a valid {getattr(hint, '__name__', hint)}")


def apply_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """Apply `key=value` strings; an unknown key or a bad value is an AtssError naming it."""
    changes = {}
    for pair in pairs:
        if "=" not in pair:
            raise AtssError(f"{param('set')} expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in _FIELDS:
            raise AtssError(f"{param('set')} {key}: no such config field (fields: {', '.join(sorted(_FIELDS))})")
        changes[key] = _parse(key, raw)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def validate(cfg: TrainConfig) -> None:
    """Reject values that cannot work, with the field named."""
    if cfg.depth not in (18, 34, 50, 101):
        raise AtssError(f"depth must be 18, 34, 50 or 101, got {cfg.depth}")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise AtssError(f"amp must be none, bf16 or fp16, got {cfg.amp!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise AtssError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.evaluator not in ("faster-coco-eval", "pycocotools"):
        raise AtssError(f"evaluator must be faster-coco-eval or pycocotools, got {cfg.evaluator!r}")
    for name in ("epochs", "batch_per_gpu", "base_batch", "log_interval"):
        if getattr(cfg, name) < 1:
            raise AtssError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("accumulate", "max_iters", "warmup_iters", "eval_interval", "checkpoint_interval",
                 "save_every_iters", "workers", "max_bad_images"):
        if getattr(cfg, name) < 0:
            raise AtssError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if not (cfg.lr > 0):
        raise AtssError(f"lr must be positive, got {cfg.lr}")
    if not (0.0 <= cfg.flip_prob <= 1.0):
        raise AtssError(f"flip_prob must be in [0, 1], got {cfg.flip_prob}")
    if len(cfg.scale) != 2 or min(cfg.scale) < 32:
        raise AtssError(f"scale must be two sizes of at least 32 px, got {cfg.scale}")
    if not (0.0 < cfg.warmup_ratio <= 1.0):
        raise AtssError(f"warmup_ratio must be in (0, 1], got {cfg.warmup_ratio}")
    if cfg.from_scratch and (cfg.pretrained or cfg.load_from):
        other = param('pretrained') if cfg.pretrained else param('load_from')
        raise AtssError(f"{param('from_scratch')} and {other} contradict each other: give one")
    if list(cfg.milestones) != sorted(cfg.milestones):
        raise AtssError(f"milestones must be increasing, got {cfg.milestones}")
    if cfg.graph_cache < 1:
        raise AtssError(f"graph_cache must be at least 1, got {cfg.graph_cache}")
    buckets = list(cfg.graph_box_buckets)
    if not buckets or min(buckets) < 1 or buckets != sorted(set(buckets)):
        raise AtssError(f"graph_box_buckets must be increasing GT counts >= 1, got {cfg.graph_box_buckets}")


def check_data_flags(cfg: TrainConfig) -> None:
    """One dataset form: --coco ROOT, or --train-ann FILE --train-images DIR (and optionally
    --val-ann FILE --val-images DIR); each JSON with its folder."""
    files = [(flag, getattr(cfg, name)) for flag, name in (
        (param('train_ann'), "train_ann"), (param('train_images'), "train_images"),
        (param('val_ann'), "val_ann"), (param('val_images'), "val_images"))]
    given = [flag for flag, value in files if value]
    if cfg.coco and given:
        raise AtssError(f"give either {param('coco')} ROOT or {param('train_ann')}/{param('train_images')}/{param('val_ann')}/{param('val_images')}, "
                        f"not both (got {param('coco')} and {given[0]})")
    for ann, images in ((param('train_ann'), param('train_images')), (param('val_ann'), param('val_images'))):
        if ann in given and images not in given:
            raise AtssError(f"{ann} needs {images} DIR (the folder its file_name values are relative to)")
        if images in given and ann not in given:
            raise AtssError(f"{images} needs {ann} FILE (the COCO-format JSON of those images)")
    if not cfg.coco and param('train_ann') not in given:
        raise AtssError(f"give {param('coco')} ROOT, or {param('train_ann')} FILE {param('train_images')} DIR "
                        f"(and {param('val_ann')} FILE {param('val_images')} DIR to evaluate)")


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def from_dict(data: dict) -> TrainConfig:
    """Rebuild a config saved by to_json (tuples come back from lists); unknown keys are ignored."""
    kwargs = {}
    for key, value in data.items():
        if key not in _FIELDS:
            continue
        if typing.get_origin(_HINTS[key]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return TrainConfig(**kwargs)


def load_json(path: Path) -> TrainConfig:
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise AtssError(f"cannot read config {path}: {exc}") from None


