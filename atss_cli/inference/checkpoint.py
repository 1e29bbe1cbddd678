"""A detector ready for inference from a checkpoint file: ours or MMDetection's.

    read_checkpoint_info(path) -> CheckpointInfo
        What a checkpoint says about the model without building it: the model fields of our
        training config (`depth`, `fpn_channels`, `head_channels`, `stacked_convs`), its test
        `scale`, the class count (from `bbox_head.atss_cls.weight`) and class names when the
        file holds them (ours: `categories` or `config["categories"]`; MMDetection 3:
        `meta["dataset_meta"]["classes"]`; MMDetection 2: `meta["CLASSES"]`).
    build_inference_model(checkpoint, *, num_classes, device, overrides=None,
                          info=None) -> torch.nn.Module
        `build_atss(num_classes=..., **model fields)` with the fields taken from, in order:
        `overrides` (the CLI flags that were given), the checkpoint's config, the R50 defaults
        (so an MMDetection ATSS checkpoint loads as it is); then `load_checkpoint`, eval mode,
        on `device`. A class-count mismatch between checkpoint and `num_classes` is an
        AtssError naming both.
    load_detector(checkpoint, *, num_classes=None, device="cpu", overrides=None, scale=None,
                  info=None) -> LoadedDetector
        The one way a checkpoint becomes a detector (the API, predict, eval and export call
        it): `build_inference_model` with the class count given (a dataset's) or the file's
        own, plus the test scale (`scale`, else the checkpoint config's, else 1333x800), the
        build fields used and the class names the file implies (`class_names_for`).
    parse_scale(text) -> (long, short)            "1333,800" or "1333x800"
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from atss_cli.errors import AtssError, param

MODEL_FIELDS = ("depth", "fpn_channels", "head_channels", "stacked_convs", "gn_groups")
DEFAULT_SCALE = (1333, 800)
CLS_WEIGHT = "bbox_head.atss_cls.weight"


@dataclass
class CheckpointInfo:
    path: Path
    model: dict = field(default_factory=dict)        # model fields found in the saved config
    scale: tuple[int, int] | None = None               # the config's (test) scale, if any
    num_classes: int | None = None                     # rows of bbox_head.atss_cls.weight
    class_names: list[str] | None = None               # in label order, if the file has them
    categories: list[dict] | None = None               # [{"id", "name"}] if the file has them


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    # The model package reads the file (weights-only, or its restricted unpickler for
    # MMDetection's metadata); never with arbitrary unpickling.
    from atss_cli.model.checkpoint import extract_state_dict, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise AtssError(f"checkpoint not found: {path}")
    ckpt, _ = read_checkpoint(path)
    state = extract_state_dict(ckpt, path)
    if not state:
        raise AtssError(f"{path} holds no model weights (no tensors under 'state_dict')")
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    info = CheckpointInfo(path=path)
    weight = state.get(CLS_WEIGHT)
    if weight is not None:
        info.num_classes = int(weight.shape[0])

    config = ckpt.get("config")
    if isinstance(config, dict):
        model_cfg = config.get("model") if isinstance(config.get("model"), dict) else config
        info.model = {k: model_cfg[k] for k in MODEL_FIELDS if isinstance(model_cfg.get(k), int)}
        scale = config.get("test_scale", config.get("scale"))
        if isinstance(scale, (list, tuple)) and len(scale) == 2:
            info.scale = (int(scale[0]), int(scale[1]))
        info.categories = _categories(config.get("categories"))
    info.categories = _categories(ckpt.get("categories")) or info.categories
    if info.categories:
        info.class_names = [c["name"] for c in info.categories]
    meta = ckpt.get("meta")
    if info.class_names is None and isinstance(meta, dict):
        classes = None
        if isinstance(meta.get("dataset_meta"), dict):
            classes = meta["dataset_meta"].get("classes")
        classes = classes or meta.get("CLASSES")
        if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
            info.class_names = [str(c) for c in classes]
    return info


def _categories(value) -> list[dict] | None:
    if isinstance(value, list) and value and all(isinstance(c, dict) and "id" in c and "name" in c for c in value):
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in value]
    return None


def parse_scale(text: str | None) -> tuple[int, int] | None:
    if text is None or str(text).strip() == "":
        return None
    parts = [p for p in str(text).lower().replace("x", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 32:
        raise AtssError(f"{param('scale')} {text!r}: expected two integers >= 32 as LONG,SHORT, e.g. 1333,800")
    return max(values), min(values)


def model_fields(info: CheckpointInfo, overrides: dict | None = None) -> dict:
    """The build_atss keyword arguments: flags given > checkpoint config > R50 defaults."""
    fields = dict(info.model)
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return fields


def build_inference_model(checkpoint: str | Path, *, num_classes: int, device, overrides: dict | None = None,
                          info: CheckpointInfo | None = None):
    from atss_cli.model import build_atss, load_checkpoint

    info = info or read_checkpoint_info(checkpoint)
    if info.num_classes is not None and info.num_classes != num_classes:
        raise AtssError(f"checkpoint {info.path.name} predicts {info.num_classes} classes but the dataset "
                        f"has {num_classes} categories")
    kwargs = model_fields(info, overrides)
    accepted = inspect.signature(build_atss).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    try:
        model = build_atss(num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as exc:
        raise AtssError(f"cannot build the model with {kwargs}: {exc}") from None
    try:
        load_checkpoint(model, str(checkpoint))
    except AtssError:
        raise
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AtssError(f"checkpoint {info.path.name} does not fit the model ({kwargs or 'R50 defaults'}): "
                        f"{first}") from None
    return model.to(device).eval()


@dataclass
class LoadedDetector:
    model: object                      # the ATSS nn.Module, eval mode, on the device asked for
    info: CheckpointInfo               # what the file says
    fields: dict                       # the build_atss keyword arguments used (flags > file > defaults)
    scale: tuple[int, int]             # the test scale (long, short)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def class_names(self) -> list[str]:
        """The file's names if it has one per class, else COCO's 80 for 80 classes, else "class N"."""
        from atss_cli.data.categories import class_names_for

        return class_names_for(self.num_classes, checkpoint_names=self.info.class_names)

    @property
    def categories(self) -> list[dict] | None:
        """[{"id", "name"}] when the file holds one per class, else None."""
        cats = self.info.categories
        return cats if cats and len(cats) == self.num_classes else None


def load_detector(checkpoint: str | Path, *, num_classes: int | None = None, device="cpu",
                  overrides: dict | None = None, scale: tuple[int, int] | None = None,
                  info: CheckpointInfo | None = None) -> LoadedDetector:
    info = info or read_checkpoint_info(checkpoint)
    if num_classes is None:
        if info.num_classes is None:
            raise AtssError(f"{checkpoint} has no {CLS_WEIGHT}: not an ATSS checkpoint")
        num_classes = info.num_classes
    model = build_inference_model(checkpoint, num_classes=num_classes, device=device, overrides=overrides,
                                  info=info)
    use_scale = tuple(scale) if scale else (info.scale or DEFAULT_SCALE)
    return LoadedDetector(model=model, info=info, fields=model_fields(info, overrides),
                          scale=(int(use_scale[0]), int(use_scale[1])))
