"""Library errors name the caller's parameters; the CLI shows the flags that set them."""

from __future__ import annotations

import io

import pytest

from atss_cli.errors import AtssError, param, render


def test_a_parameter_reads_as_its_name_in_python_and_as_its_flag_on_the_command_line():
    from atss_cli.terminal import flag_for

    exc = AtssError(f"give either {param('coco')} ROOT or {param('train_ann')} FILE (got {param('overrides')})")
    assert str(exc) == "give either coco ROOT or train_ann FILE (got overrides)"
    assert exc.render(flag_for) == "give either --coco ROOT or --train-ann FILE (got --set)"
    assert render("no parameter here", flag_for) == "no parameter here"


def test_report_error_prints_the_flag(monkeypatch):
    from atss_cli.terminal import report_error

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert report_error(AtssError(f"{param('score_thr')} must be between 0 and 1")) == 2
    assert err.getvalue() == "error: --score-thr must be between 0 and 1\n"


def test_library_functions_raise_with_parameter_names():
    from atss_cli.data.synthetic import generate_synthetic
    from atss_cli.launch.evaluation import evaluation_request

    with pytest.raises(AtssError) as info:
        evaluation_request(checkpoint="x.pth")
    assert str(info.value) == "give coco ROOT, or ann FILE with images DIR"
    with pytest.raises(AtssError, match=r"^size must be between 64 and 4096 pixels"):
        generate_synthetic("/nonexistent-atss-dir", train_images=1, val_images=1, size=10)


def test_the_eval_request_goes_to_the_workers_as_a_file_and_back(tmp_path):
    from atss_cli.launch.evaluation import EvalRequest, evaluation_request

    ann = tmp_path / "val.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    images = tmp_path / "images"
    images.mkdir()
    ckpt = tmp_path / "model.pth"
    req = evaluation_request(checkpoint=ckpt, ann=ann, images=images, scale=(640, 480),
                             model_overrides={"depth": 18, "fpn_channels": None}, amp="none")
    assert req.title == "COCO bbox: model.pth on val"
    assert req.results.endswith("model.val.bbox.json") and req.amp is None and req.model_overrides == {"depth": 18}
    path = tmp_path / "request.json"
    path.write_text(req.to_json())
    assert EvalRequest.from_json(path) == req
