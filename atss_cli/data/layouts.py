"""Folders laid out by common annotation export tools, recognised so that `--coco DIR` on one of
them answers with the exact flags that read it, instead of only "no annotations/ folder".

Recognised (each a COCO-format JSON next to its images; what the tools write today):
- Roboflow "COCO" export: DIR/train/_annotations.coco.json, DIR/valid/..., DIR/test/...; each
  split folder holds its images.
- CVAT "COCO 1.0" export: DIR/annotations/instances_<subset>.json and DIR/images/ (flat, or one
  folder per subset).
- Label Studio "COCO" export: DIR/result.json, with file_name values like "images/x.jpg", so
  the folder they are relative to is DIR itself.

We suggest rather than guess silently: which file is the validation split is the user's call
(a CVAT task with one subset has none), and the flags keep working when the folder is moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_ROBOFLOW_JSON = "_annotations.coco.json"
_ROBOFLOW_TRAIN = ("train",)
_ROBOFLOW_VAL = ("valid", "val", "validation", "test")
_CVAT_VAL_WORDS = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class ExportLayout:
    tool: str
    splits: dict[str, tuple[Path, Path]]     # split name -> (annotation file, image folder)
    train: str | None                        # which split trains, when one is clearly the training one
    val: str | None

    def flags(self) -> str:
        """The prepare/train flags that read this folder (and eval's, for the validation split)."""
        parts = []
        if self.train:
            ann, images = self.splits[self.train]
            parts.append(f"--train-ann {ann} --train-images {images}")
        if self.val:
            ann, images = self.splits[self.val]
            parts.append(f"--val-ann {ann} --val-images {images}")
        text = " ".join(parts)
        if self.val:
            ann, images = self.splits[self.val]
            text += f" (atss eval: --ann {ann} --images {images})"
        return text

    def hint(self) -> str:
        return f"it looks like a {self.tool} export; read it with {self.flags()}"


def _roboflow(root: Path) -> ExportLayout | None:
    splits = {d.name: (d / _ROBOFLOW_JSON, d) for d in sorted(root.iterdir())
              if d.is_dir() and (d / _ROBOFLOW_JSON).is_file()}
    if not splits:
        return None
    train = next((s for s in _ROBOFLOW_TRAIN if s in splits), None)
    val = next((s for s in _ROBOFLOW_VAL if s in splits), None)
    if train is None:                       # a single exported split: offer it for training
        train = next(iter(splits))
        val = val if val != train else None
    return ExportLayout("Roboflow COCO", splits, train, val)


def _cvat(root: Path) -> ExportLayout | None:
    ann_dir, image_root = root / "annotations", root / "images"
    if not (ann_dir.is_dir() and image_root.is_dir()):
        return None
    splits = {}
    for ann in sorted(ann_dir.glob("instances_*.json")):
        subset = ann.stem[len("instances_"):]
        folder = image_root / subset
        splits[subset] = (ann, folder if folder.is_dir() else image_root)
    if not splits:
        return None
    val = next((s for s in splits if s.lower() in _CVAT_VAL_WORDS), None)
    train = next((s for s in splits if s != val), None)
    return ExportLayout("CVAT COCO 1.0", splits, train, val)


def _label_studio(root: Path) -> ExportLayout | None:
    ann = root / "result.json"
    if not (ann.is_file() and (root / "images").is_dir()):
        return None
    return ExportLayout("Label Studio COCO", {"result": (ann, root)}, "result", None)


def recognise(root: Path) -> ExportLayout | None:
    """The export layout of `root`, or None (also for the COCO 2017 layout itself)."""
    root = Path(root)
    if not root.is_dir():
        return None
    try:
        for probe in (_roboflow, _cvat, _label_studio):
            found = probe(root)
            if found is not None:
                return found
    except OSError:
        return None
    return None
