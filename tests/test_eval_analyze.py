"""`atss eval --analyze`: the analysis package on a generated case with known error counts and on
real COCO data (cocoapi's fake results on faster-coco-eval's 100 val2014 images), and the CLI.

The TIDE numbers are also checked live against the tidecv package and the report in Chromium
(tests/test_eval_analyze_system.py); here they are checked against tidecv 1.0.1's output on the
real case, recorded once.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis_cases import REAL_DETS, REAL_GT
from atss_cli.evaluation.analysis import analyze
from atss_cli.evaluation.analysis.confusion import confusion_matrix
from atss_cli.evaluation.analysis.inputs import load_detections, load_ground_truth
from atss_cli.evaluation.analysis.synthetic import error_case
from atss_cli.evaluation.analysis.tide import tide_breakdown
from cli_run import assert_one_line_error, atss

# tidecv 1.0.1 on REAL_GT + REAL_DETS (TIDE().evaluate(COCO(gt), COCOResult(dets), mode=BOX)), 0-100 points.



@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return error_case(tmp_path_factory.mktemp("analysis_case"))


@pytest.fixture(scope="module")
def analysed(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis_out")
    return analyze(case["gt"], case["dets"], out, images_dir=case["images"]), out


def test_generated_case_has_each_error_kind_its_known_count(case):
    gt = load_ground_truth(case["gt"])
    result = tide_breakdown(gt, load_detections(case["dets"], gt))
    assert result.counts == case["tide_counts"]
    assert all(v > 0 for v in case["tide_counts"].values())
    assert result.main["Cls"] > 0 and result.main["Loc"] > 0 and result.main["Miss"] > 0
    assert result.main["Bkg"] > 0   # background boxes score above every true positive


def test_generated_case_confusion_matrix_is_the_known_one(case):
    gt = load_ground_truth(case["gt"])
    cm = confusion_matrix(gt, load_detections(case["dets"], gt))
    np.testing.assert_array_equal(np.array(cm["matrix"]), case["confusion"])
    assert cm["labels"][-1] == "background" and (cm["iou_thresh"], cm["score_thresh"]) == (0.5, 0.3)


def test_analysis_json_holds_every_documented_field(analysed):
    result, out = analysed
    on_disk = json.loads((out / "analysis.json").read_text())
    assert set(on_disk) == {"version", "inputs", "coco", "pr", "per_class", "confusion", "tide", "gallery",
                            "files", "seconds"}
    assert on_disk["tide"]["counts"] == result["tide"]["counts"]
    assert set(on_disk["pr"]["all_classes"]) == {"0.50", "0.75", "mean"}
    for curves in on_disk["pr"]["all_classes"].values():
        assert set(curves) == {"all", "small", "medium", "large"}
        assert all(len(v) == 101 for v in curves.values())
    pc = on_disk["per_class"][0]
    assert {"category_id", "name", "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "num_gt",
            "num_detections", "curves"} <= set(pc)
    for name in on_disk["files"].values():
        assert (out / name).is_file(), name
    assert on_disk["gallery"]["images"] and all((out / g["picture"]).is_file() for g in on_disk["gallery"]["images"])


def test_report_escapes_class_names_and_links_only_local_files(analysed):
    _, out = analysed
    html = (out / "report.html").read_text()
    assert '<b>"odd" & name</b>' not in html
    assert "&lt;b&gt;&quot;odd&quot; &amp; name&lt;/b&gt;" in html
    assert "http:" not in html and "https:" not in html
    for src in __import__("re").findall(r"src='([^']+)'", html):
        assert (out / src).is_file(), src


def test_real_data_files_have_the_published_counts():
    gt = json.loads(REAL_GT.read_text())
    dets = json.loads(REAL_DETS.read_text())
    assert (len(gt["images"]), len(gt["annotations"]), len(dets)) == (100, 839, 734)


def test_pr_curves_average_to_cocoeval_map_on_real_case(tmp_path):
    result = analyze(REAL_GT, REAL_DETS, tmp_path)
    mean_curve = np.array(result["pr"]["all_classes"]["mean"]["all"])
    assert abs(mean_curve.mean() - result["coco"]["mAP"]) < 1e-4
    aps = [c["ap"] for c in result["per_class"] if c["ap"] >= 0]
    assert abs(np.mean(aps) - result["coco"]["mAP"]) < 1e-9
    assert result["gallery"]["skipped"]                      # no images for this case


def _fce_confusion(gt_path, dets_path):
    from faster_coco_eval import COCO
    from faster_coco_eval.extra import PreviewResults

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        preview = PreviewResults(gt, gt.loadRes(str(dets_path)), iou_tresh=0.5, min_score=0.3, useCats=False)
        return preview, preview.compute_confusion_matrix()


def test_confusion_matrix_equals_faster_coco_eval_on_real_case():
    gt = load_ground_truth(REAL_GT)
    ours = np.array(confusion_matrix(gt, load_detections(REAL_DETS, gt))["matrix"])
    preview, theirs = _fce_confusion(REAL_GT, REAL_DETS)
    k = len(gt.cat_ids)
    # faster-coco-eval counts crowd regions as ground truth: one with a detection on it as a pair,
    # one without as a miss. Ours leaves crowd regions out; move those counts back.
    expected = np.zeros((k, k + 2))
    col = {int(c): i for i, c in enumerate(gt.cat_ids)}
    crowd = 0
    for ann in preview.cocoGt.anns.values():
        if not ann.get("iscrowd"):
            continue
        crowd += 1
        if ann.get("dt_id") is not None:
            expected[col[ann["category_id"]], col[preview.cocoDt.anns[ann["dt_id"]]["category_id"]]] += 1
        else:
            expected[col[ann["category_id"]], k + 1] += 1
    assert crowd > 0   # the real case does have crowd regions, so the adjustment is exercised
    expected[:, :k] += ours[:k, :k]
    expected[:, k] += ours[k, :k]        # false positives by detected class
    expected[:, k + 1] += ours[:k, k]    # missed by ground-truth class
    np.testing.assert_array_equal(theirs, expected)
    assert ours[:k, :k].sum() > 0 and ours[k].sum() > 0 and ours[:, k].sum() > 0


def test_tide_equals_recorded_tidecv_on_real_case():
    gt = load_ground_truth(REAL_GT)
    ours = tide_breakdown(gt, load_detections(REAL_DETS, gt)).as_dict()
    ref = json.loads((Path(__file__).parent / "data" / "analysis" / "tidecv_real_case.json").read_text())
    assert abs(ours["ap50"] - ref["ap50"]) < 1e-9
    for key in ("dap", "special_dap"):
        for name, value in ref[key].items():
            assert abs(ours[key][name] - value) < 1e-9, (key, name, ours[key][name], value)
    assert ours["counts"] == ref["counts"]


def test_cli_detections_on_ann_images_writes_the_report(case, tmp_path):
    out = tmp_path / "analysis"
    proc = atss("eval", "--ann", case["gt"], "--images", case["images"], "--detections", case["dets"],
                "--analyze", out, "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert f"analysis: {out / 'report.html'}" in proc.stdout
    assert json.loads((out / "analysis.json").read_text())["tide"]["counts"] == case["tide_counts"]


def test_cli_gallery_is_skipped_with_one_line_without_pictures(case, tmp_path):
    empty = tmp_path / "no_pictures"
    empty.mkdir()
    proc = atss("eval", "--ann", case["gt"], "--images", empty, "--detections", case["dets"],
                "--analyze", tmp_path / "a", "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert sum("gallery skipped" in line for line in proc.stdout.splitlines()) == 1


def test_cli_analyze_into_a_file_is_a_one_line_error(case, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc = atss("eval", "--ann", case["gt"], "--images", case["images"], "--detections", case["dets"],
                "--analyze", target, "--cache-dir", tmp_path / "cache")
    assert_one_line_error(proc)


def test_cli_checkpoint_and_onnx_flags_are_exclusive(case, tmp_path):
    proc = atss("eval", "--ann", case["gt"], "--images", case["images"], "--detections", case["dets"],
                "--onnx", case["dets"], "--cache-dir", tmp_path / "cache")
    assert_one_line_error(proc, "one of them")


def test_train_writes_the_last_evaluations_analysis(case, tmp_path):
    """training.train._write_analysis, as _evaluate calls it on rank 0 after the last epoch."""
    from atss_cli.data.cache import load_ann
    from atss_cli.training.train import _write_analysis

    cache = load_ann(case["gt"], case["images"], tmp_path / "cache")
    messages = []
    reporter = SimpleNamespace(info=messages.append)
    run = SimpleNamespace(work=tmp_path / "work", val_set=cache)
    (tmp_path / "work").mkdir()
    _write_analysis(run, Path(case["dets"]), reporter)
    assert (tmp_path / "work" / "analysis" / "report.html").is_file()
    assert messages == [f"analysis: {tmp_path / 'work' / 'analysis' / 'report.html'}"]
