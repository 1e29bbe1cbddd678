"""Turns `atss prepare --synthetic` output into a dataset as an export tool would write it, to try
the commands of the README's "Your own dataset" section by hand.

    python docs/examples/custom_dataset.py SYNTHETIC_ROOT OUT

OUT gets `labels/{train,val}.json` and `images/<split>/<k>/...` (file_name with sub-folders); the
shape classes get category ids 3, 40, 1000 and 9, and three more categories (10, 11, 41) are
listed without annotations, 7 in all, plus a Roboflow-style parent entry (id 0) that the tools
drop. Images are re-encoded in turn as PNG, baseline JPEG, progressive JPEG, WebP, BMP, grayscale
PNG and EXIF-rotated JPEG (stored rotated, orientation 6 or 8: displayed as the original, so the
JSON's sizes and boxes stay those of the displayed image). `area` and `iscrowd` are left out of
every other annotation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

IDS = {1: 3, 2: 40, 3: 1000, 5: 9}  # synthetic category id -> ours
EXTRA = [(10, "kite"), (11, "lamp"), (41, "mug")]
FORMATS = ["png", "jpg", "progressive", "webp", "bmp", "gray", "exif6", "exif8"]


def write(img: Image.Image, path: Path, fmt: str) -> Path:
    path = path.with_suffix({"progressive": ".jpg", "gray": ".png", "exif6": ".jpg", "exif8": ".jpg"}.get(fmt, "." + fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "progressive":
        img.save(path, quality=95, progressive=True)
    elif fmt == "gray":
        img.convert("L").save(path)
    elif fmt in ("exif6", "exif8"):
        # Orientation 6 shows the stored image turned 90 degrees clockwise, 8 counter-clockwise:
        # store it turned the other way so that it displays as the original.
        stored = img.transpose(Image.Transpose.ROTATE_90 if fmt == "exif6" else Image.Transpose.ROTATE_270)
        exif = Image.Exif()
        exif[0x0112] = 6 if fmt == "exif6" else 8
        stored.save(path, quality=95, exif=exif)
    else:
        img.save(path, quality=95) if fmt == "jpg" else img.save(path)
    return path


def convert(src_root: Path, out: Path) -> None:
    for split, name in (("train2017", "train"), ("val2017", "val")):
        doc = json.loads((src_root / "annotations" / f"instances_{split}.json").read_text())
        cats = [{"id": 0, "name": "things", "supercategory": "none"}]
        cats += [{"id": IDS[c["id"]], "name": c["name"], "supercategory": "things"} for c in doc["categories"]
                 if c["id"] in IDS]
        cats += [{"id": i, "name": n, "supercategory": "things"} for i, n in EXTRA]
        images = []
        for k, im in enumerate(doc["images"]):
            fmt = FORMATS[k % len(FORMATS)]
            rel = Path(name) / f"part{k % 3}" / Path(im["file_name"]).stem
            path = write(Image.open(src_root / split / im["file_name"]).convert("RGB"), out / "images" / rel, fmt)
            images.append({**im, "file_name": str(path.relative_to(out / "images"))})
        anns = []
        for k, a in enumerate(doc["annotations"]):
            if a["category_id"] not in IDS:
                continue
            a = {**a, "category_id": IDS[a["category_id"]], "attributes": {"occluded": False}}
            if k % 2:
                a.pop("area", None)
                a.pop("iscrowd", None)
            anns.append(a)
        (out / "labels").mkdir(parents=True, exist_ok=True)
        (out / "labels" / f"{name}.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                 "categories": cats}))
        print(f"{name}: {len(images)} images, {len(anns)} annotations -> {out / 'labels' / (name + '.json')}")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
