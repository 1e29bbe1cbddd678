"""What COCOeval scores against: the split's JSON, cleaned by the data pipeline's own rules.

    eval_ground_truth(cache) -> dict
        The annotation file of `cache` (an atss_cli.data.CocoCache) as a loaded COCO dict.

A file from COCO itself passes unchanged. A hand-made or exported one may lack what COCOeval
reads without a default: a missing "area" becomes the box's w * h (COCOeval's small / medium /
large ranges read it), a missing "iscrowd" 0, a missing "id" a fresh one. Annotations that
`parse_coco` (SPEC section 5) drops as repeated ids (COCOeval would read the last one twice),
non-finite or negative-size boxes are left out, and so are the categories it drops
(supercategory-only entries), so the per-class table holds the classes the model knows. The
other dropped annotations stay: COCOeval itself ignores those of unknown images or categories,
and degenerate boxes are ground truth a detector can still miss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The rules of atss_cli.data.coco whose annotations COCOeval must not see.
LEFT_OUT = ("duplicate_id", "non_finite", "negative_size")


def eval_ground_truth(cache) -> dict:
    from atss_cli.data.coco import load_json, parse_coco

    path = Path(cache.ann_file)
    with open(path, "rb") as f:
        data = load_json(path, f.read())
    masks = parse_coco(path, data).rule_masks
    left_out = np.zeros(len(data["annotations"]), dtype=bool)
    for rule in LEFT_OUT:
        left_out |= masks[rule]
    kept_ids = {int(c["id"]) for c in cache.categories}
    # Fresh ids start above every id in the file, left-out annotations' too.
    next_id = 1 + max((a["id"] for a in data["annotations"]
                       if isinstance(a.get("id"), int) and not isinstance(a.get("id"), bool)), default=0)
    anns, minus_one_seen = [], False
    for a, out in zip(data["annotations"], left_out):
        if out:
            continue
        a = dict(a)
        ann_id = a.get("id")
        # Absent ids read -1 in the pipeline, and so does an explicit -1: COCOeval needs unique ids.
        if ann_id is None or (ann_id == -1 and minus_one_seen):
            a["id"], next_id = next_id, next_id + 1
        minus_one_seen |= ann_id == -1
        if a.get("area") is None:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        a.setdefault("iscrowd", 0)
        anns.append(a)
    cats = [c for c in data["categories"] if int(c["id"]) in kept_ids]
    return {**{k: v for k, v in data.items() if k not in ("annotations", "categories")},
            "annotations": anns, "categories": cats}
