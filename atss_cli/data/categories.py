"""Class names and category lists: which name each label has, from wherever the names are.

    class_names_for(num_classes, *, coco_root=None, split="val2017", checkpoint_names=None,
                    ann=None, stored_names=None) -> list[str]
        names in label order: a COCO-format JSON's categories (`ann`) or the dataset's
        (`coco_root`), sorted by id as the data pipeline labels them, else the model file's
        (`stored_names`, `checkpoint_names`), else COCO's 80 when the class count is 80, else
        "class N".
    ann_categories(path) -> [{"id", "name"}]: a COCO-format JSON's categories in label order
    load_coco_categories() -> [{"id", "name"}]: COCO's 80 detection categories in label order
        (label i = i-th entry), as an MMDetection COCO checkpoint predicts them

The rules that map category ids to labels are atss_cli/data/coco.py's (`parse_coco`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from atss_cli.errors import AtssError, param

COCO_CATEGORIES_FILE = Path(__file__).with_name("coco_categories.json")


def class_names_for(num_classes: int, *, coco_root: str | Path | None = None, split: str = "val2017",
                    checkpoint_names: Sequence[str] | None = None, ann: str | Path | None = None,
                    stored_names: Sequence[str] | None = None) -> list[str]:
    if coco_root is not None or ann is not None:
        cats = ann_categories(ann) if ann is not None else None
        if cats is None:
            from atss_cli.data import load_split

            cats = load_split(Path(coco_root), split).categories
        names = [str(c["name"]) for c in cats]
        if len(names) != num_classes:
            source = f"{param('ann')} {ann}" if ann is not None else f"{param('coco')} {coco_root}"
            raise AtssError(f"{source}: {len(names)} categories but the model predicts {num_classes} classes")
        return names
    for given in (stored_names, checkpoint_names):
        if given is not None and len(given) == num_classes:
            return [str(n) for n in given]
    if num_classes == 80:
        return [c["name"] for c in load_coco_categories()]
    return [f"class {i}" for i in range(num_classes)]


def ann_categories(path: str | Path) -> list[dict]:
    """The categories of a COCO-format JSON in label order ([{"id", "name"}]), as training maps
    them (sorted by id; supercategory-only entries dropped)."""
    from atss_cli.data.coco import load_json, parse_coco

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AtssError(f"{param('ann')} {path}: {exc.strerror or exc}") from None
    return parse_coco(path, load_json(path, data)).categories


def load_coco_categories() -> list[dict]:
    """COCO's 80 detection categories [{"id", "name"}] in MMDetection's label order."""
    with open(COCO_CATEGORIES_FILE) as f:
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in json.load(f)]
