"""Loading weights: whole detectors (MMDetection's ATSS checkpoints or ours) and torchvision's
ImageNet ResNets.

Files are read with `torch.load(weights_only=True)`. MMDetection checkpoints also carry a `meta`
dict (and sometimes `message_hub`, optimizer state) holding objects of mmengine / numpy classes,
which the weights-only unpickler refuses. Only then do we read the file again with a restricted
unpickler: it resolves exactly the globals the weights-only unpickler allows (tensor rebuilding,
dtypes, OrderedDict, ...) and turns every other class or function named in the file into an inert
placeholder, so nothing from the file is ever imported or called. Tensors come back intact; the
placeholders only ever sit in metadata we do not use. (We never fall back to
`weights_only=False`, which would run arbitrary code from the file.)
"""

from __future__ import annotations

import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atss_cli.errors import AtssError, param

# torchvision's IMAGENET1K_V1 ResNet files (what SPEC.md's recipe starts from), by depth. The 8
# hex digits in each name are the start of the file's sha256 (torchvision checks them on download).
TORCHVISION_RESNET_FILES = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/"

_CLS_PREFIX = "bbox_head.atss_cls."


@dataclass
class LoadReport:
    """What `load_checkpoint` / `load_backbone` did; `str(report)` is a one-line summary and the
    report is truthy when it has something to say beyond "all loaded"."""

    path: str
    loaded: int = 0                                       # model entries set from the file
    unexpected: list[str] = field(default_factory=list)   # file entries the model does not have
    skipped: list[str] = field(default_factory=list)      # "key: file [..] vs model [..]" (skip_mismatched)
    defaulted: list[str] = field(default_factory=list)    # absent BN counters kept at their value
    file_classes: int | None = None                       # the file's class count when its classifier was skipped
    placeholder_meta: bool = False                        # the file needed the restricted unpickler

    def __bool__(self) -> bool:
        return bool(self.unexpected or self.skipped)

    def __str__(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        if self.skipped:
            parts.append(f"skipped for shape mismatch (fine-tuning to another class count): "
                         f"{', '.join(self.skipped)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} extra entries ignored: {_preview(self.unexpected)}")
        return "; ".join(parts)


def _preview(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---- reading files --------------------------------------------------------------------------
class _Placeholder:
    """Stands for any object of a class the file names but we do not allow; swallows its state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} placeholder>"


def _allowed_globals() -> dict:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private helper; the short list below covers checkpoints
        import collections

        return {"collections.OrderedDict": collections.OrderedDict,
                "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
                "torch.Size": torch.Size}


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = None
    _placeholders: dict = {}

    def find_class(self, module: str, name: str):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        obj = _RestrictedUnpickler._allowed.get(f"{module}.{name}")
        if obj is not None:
            return obj
        if module == "torch" and name.endswith("Storage"):  # legacy typed storages
            return super().find_class(module, name)
        key = f"{module}.{name}"
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (_Placeholder,), {"__module__": module})
        return self._placeholders[key]


_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load,
                                           __name__="atss_restricted_pickle")


def read_checkpoint(path) -> tuple[object, bool]:
    """torch.load a file on the CPU -> (object, used the restricted unpickler)."""
    path = Path(path)
    if not path.is_file():
        raise AtssError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError:
        pass  # metadata of classes the weights-only unpickler refuses: see the module docstring
    except Exception as exc:  # noqa: BLE001
        raise AtssError(f"cannot read {path} as a PyTorch checkpoint: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle), True
    except Exception as exc:  # noqa: BLE001
        raise AtssError(f"cannot read {path} as a PyTorch checkpoint: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def extract_state_dict(obj, path) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: its `state_dict` (MMDetection's and ours), `model`, or the
    dict itself when it maps names to tensors; a DistributedDataParallel `module.` prefix is dropped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise AtssError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict with a state_dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise AtssError(f"{path} has no tensors (top-level keys: {_preview([str(k) for k in obj])})")
    if any(k.startswith("module.") for k in state) and not any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# ---- torchvision's ImageNet files ------------------------------------------------------------
def imagenet_file_name(depth: int) -> str:
    """The file name of torchvision's IMAGENET1K_V1 ResNet-`depth` weights."""
    if depth not in TORCHVISION_RESNET_FILES:
        raise AtssError(f"no ImageNet ResNet file for depth {depth} (depths: {sorted(TORCHVISION_RESNET_FILES)})")
    return TORCHVISION_RESNET_FILES[depth]


def sha256_prefix(path, n: int = 8) -> str:
    """The first `n` hex digits of the file's sha256 (about 0.3 s for the 100 MB of ResNet-50)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:n]


def check_imagenet_file(path, depth: int) -> None:
    """AtssError unless `path` is torchvision's IMAGENET1K_V1 ResNet-`depth` file: its exact name,
    and content whose sha256 starts with the 8 hex digits of that name, as torchvision checks a
    download. Other weights of the same family (torchvision's V2 `resnet50-11ad3fa6.pth`, a file
    renamed or damaged) are not the recipe's starting point."""
    path = Path(path)
    want = imagenet_file_name(depth)
    if path.name != want:
        raise AtssError(f"{path}: the recipe starts from torchvision's IMAGENET1K_V1 ResNet-{depth} weights, "
                        f"file {want} ({TORCHVISION_URL}{want}), not {path.name}")
    expected = want.rsplit("-", 1)[1].split(".")[0]
    got = sha256_prefix(path, len(expected))
    if got != expected:
        raise AtssError(f"{path}: sha256 starts {got}, not {expected}: not torchvision's file {want} "
                        f"(damaged or replaced); download it again from {TORCHVISION_URL}{want}")


# ---- loading into a model -------------------------------------------------------------------
def _load_into(module: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, *,
               what: str, skip_prefix: str | None = None) -> LoadReport:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise AtssError(f"{report.path} lacks {len(missing)} of the {what}'s {len(own)} entries: "
                        f"{_preview(missing)} (is it a checkpoint of this model, with this depth?)")
    report.defaulted = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    to_load = {}
    mismatched = []
    for k, target in own.items():
        if k not in state:
            continue
        src = state[k]
        if src.shape != target.shape:
            text = f"{k}: file {list(src.shape)} vs model {list(target.shape)}"
            if skip_prefix is not None and k.startswith(skip_prefix):
                report.skipped.append(text)
                if k.endswith(".bias"):  # one anchor per location: the bias length is the class count
                    report.file_classes = int(src.shape[0])
                continue
            mismatched.append(text)
            continue
        to_load[k] = src
    if mismatched:
        hint = (f"; pass skip_mismatched=True ({param('load_from')} fine-tuning) to start the class conv afresh"
                if all(m.startswith(_CLS_PREFIX) for m in mismatched) else "")
        raise AtssError(f"{report.path} does not fit the {what}: {_preview(mismatched, 3)}{hint}")
    with torch.no_grad():
        for k, v in to_load.items():
            own[k].copy_(v)
    report.loaded = len(to_load)
    return report


def load_checkpoint(model: nn.Module, path, skip_mismatched: bool = False) -> LoadReport:
    """Load a detector checkpoint into `model`: an MMDetection ATSS checkpoint (its `state_dict`)
    or one of ours. Every model entry must be in the file (else AtssError listing the missing
    ones); extra entries are reported. `skip_mismatched=True` leaves `bbox_head.atss_cls` at its
    initial values when its shape differs (another class count) and reports it; any other shape
    mismatch is an error."""
    obj, placeholder = read_checkpoint(path)
    state = extract_state_dict(obj, path)
    report = LoadReport(path=str(path), placeholder_meta=placeholder)
    return _load_into(model, state, report, what="model",
                      skip_prefix=_CLS_PREFIX if skip_mismatched else None)


def load_backbone(model: nn.Module, path) -> LoadReport:
    """Load torchvision ImageNet ResNet weights (e.g. `resnet50-0676ba61.pth`) into
    `model.backbone`; the classifier (`fc.*`) is ignored. A detector checkpoint's `backbone.*`
    entries are taken as well. Any file of the right keys and shapes loads: training checks it
    is the recipe's file first (`check_imagenet_file`)."""
    obj, placeholder = read_checkpoint(path)
    state = extract_state_dict(obj, path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    report = LoadReport(path=str(path), placeholder_meta=placeholder)
    return _load_into(model.backbone, state, report, what="backbone")
