"""`atss eval --onnx FILE --analyze DIR` and `--checkpoint CKPT --analyze DIR` on a tiny trained model:
both write the analysis, and the exported file scores what the checkpoint scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli_run import atss
from test_export_onnx import CLASS_NAMES, scene, trained_model  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_eval")
    (root / "images").mkdir()
    rng = np.random.default_rng(5)
    images, anns = [], []
    for i in range(4):
        img, boxes, labels = scene(rng, 96, 128, n=4)
        name = f"{i}.png"
        Image.fromarray(img).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": 128, "height": 96})
        for (x0, y0, x1, y1), c in zip(boxes.tolist(), labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]}))
    return ann, root / "images"


@pytest.mark.slow
def test_onnx_and_checkpoint_eval_write_the_analysis(trained_model, split, tmp_path):  # noqa: F811
    ckpt, onnx_path = trained_model
    ann, images = split
    metrics = {}
    for kind, flag, model in (("ckpt", "--checkpoint", ckpt), ("onnx", "--onnx", onnx_path)):
        out = tmp_path / f"analysis_{kind}"
        proc = atss("eval", flag, model, "--ann", ann, "--images", images, "--analyze", out,
                    "--json", tmp_path / f"{kind}.json", "--results", tmp_path / f"{kind}.bbox.json",
                    "--cache-dir", tmp_path / "cache", "--device", "cpu", timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert f"analysis: {out / 'report.html'}" in proc.stdout
        result = json.loads((out / "analysis.json").read_text())
        assert result["inputs"]["num_images"] == 4
        assert [c["name"] for c in result["inputs"]["categories"]] == CLASS_NAMES
        assert len(result["gallery"]["images"]) > 0
        metrics[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
        assert abs(result["coco"]["mAP"] - metrics[kind]["mAP"]) < 1e-9
    assert abs(metrics["ckpt"]["mAP"] - metrics["onnx"]["mAP"]) < 0.01
