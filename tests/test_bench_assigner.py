"""`atss bench assigner` on the CPU: geometry rows, checkpoints, GPU columns, the CLI (numbers not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from atss_cli.benchmarks import assigner as bench
from atss_cli.ops import scenes


def test_grid_geometry_of_a_bench_scene_and_none_for_holes():
    scene = scenes.bench_scene(2, 5)
    geo, why = bench.grid_geometry(scene)
    assert geo is not None, why
    assert [h * w for h, w in geo.level_shapes] == list(scene.level_sizes)
    assert geo.strides == (8, 16, 32, 64, 128)
    assert geo.extent.tolist() == [[800, 1344]] * 2 and geo.extent.dtype == torch.int64
    holes = scenes.make_scene(1, [(200, 300)], [4], holes=0.3)
    geo, why = bench.grid_geometry(holes)
    assert geo is None and "not a grid" in why


def test_run_with_and_without_geometry_checkpoints_each_case():
    settings = bench.Settings(batches=(1,), num_gts=(3, 0), devices=("cpu",), repeats=2, warmup=1,
                              validate=False, geometry="both", case_seconds=5)
    seen = []
    result = bench.run(settings, checkpoint=lambda r: seen.append(len(r["rows"])))
    assert seen == [3, 6]  # after each case: reference, extension +geometry, extension
    rows = result["rows"]
    assert [(r["backend"], r["geometry"]) for r in rows[:3]] == [("reference", False), ("extension", True),
                                                                 ("extension", False)]
    for r in rows:
        assert "differ" not in r["note"], r["note"]
        assert r["median_ms"] > 0 and r["event_us"] is None and r["graph_us"] is None  # no GPU times on the CPU
    assert rows[0]["positives"] == rows[1]["positives"] == rows[2]["positives"]
    assert result["environment"]["validate"] is False and "geometry_in_kernels" in result["environment"]


def test_compare_case_flags_a_differing_result():
    rows = {("reference", False): bench.Row("cpu", "reference", 1, 2, 10, median_ms=4.0),
            ("extension", True): bench.Row("cpu", "extension", 1, 2, 10, median_ms=1.0, geometry=True),
            ("extension", False): bench.Row("cpu", "extension", 1, 2, 10, median_ms=2.0)}
    a = (torch.tensor([0, -1]), torch.tensor([0.5, 0.0]))
    b = (torch.tensor([0, 1]), torch.tensor([0.5, 0.2]))
    bench._compare_case(rows, {("reference", False): a, ("extension", True): b, ("extension", False): a})
    assert rows[("extension", True)].speedup == 4.0 and rows[("extension", False)].speedup == 2.0
    assert "differs from the extension without geometry" in rows[("extension", True)].note
    assert "differs from the reference" in rows[("extension", True)].note
    assert rows[("extension", False)].note == ""


def test_quartiles():
    assert bench.quartiles([3.0, 1.0, 2.0]) == (2.0, None, None)
    med, q1, q3 = bench.quartiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and q1 < med < q3


def test_markdown_has_gpu_columns_only_with_gpu_times():
    row = bench.Row("cuda", "extension", 16, 100, 22400, runs=20, median_ms=0.2, geometry=True, event_us=40.0,
                    event_q1_us=39.0, event_q3_us=41.0, graph_us=30.0, host_us=25.0, speedup_gpu=300.0)
    env = {"gpu": "NVIDIA H200", "cpu": "x", "cpu_count": 16, "torch_threads": 16, "load_average": None,
           "torch": "2.11", "torch_cuda": "13.0", "validate": False, "seed": 0, "image_hw": [800, 1333],
           "date_utc": "now"}
    from dataclasses import asdict

    text = bench.markdown_table({"environment": env, "notes": [], "rows": [asdict(row)]})
    assert "GPU us (events)" in text and "| extension +geometry | 16 | 100 |" in text
    assert "40 (39-41)" in text and "300x" in text
    row.event_us = None
    assert "GPU us" not in bench.markdown_table({"environment": env, "notes": [], "rows": [asdict(row)]})


def test_bad_geometry_mode():
    with pytest.raises(ValueError, match="geometry"):
        bench.run(bench.Settings(devices=("cpu",), geometry="sometimes"))


def test_cli_no_validate_geometry_off_json_and_markdown(tmp_path):
    from atss_cli.cli.main import main

    js, md = tmp_path / "a.json", tmp_path / "a.md"
    rc = main(["bench", "assigner", "--device", "cpu", "--batch", "1", "--num-gt", "2", "--repeats", "2",
               "--warmup", "1", "--no-validate", "--geometry", "off", "--backend", "extension",
               "--json", str(js), "--markdown", str(md)])
    assert rc == 0
    data = json.loads(js.read_text())
    assert data["settings"]["validate"] is False and data["settings"]["geometry"] == "off"
    assert [(r["backend"], r["geometry"]) for r in data["rows"]] == [("extension", False)]
    assert "validate=False" in md.read_text()
    assert main(["bench", "assigner", "--device", "cpu", "--geometry", "sometimes"]) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_run_on_cuda_has_gpu_times_and_a_graph():
    """The CUDA path of the benchmark: event and graph times, no failed capture, same results."""
    from atss_cli import ops

    if not ops.extension.has_cuda():
        pytest.skip("the extension has no CUDA kernels")
    settings = bench.Settings(batches=(2,), num_gts=(5,), devices=("cuda",), repeats=3, warmup=1, validate=False,
                              geometry="both", gpu_calls=4, gpu_samples=4, case_seconds=5)
    rows = bench.run(settings)["rows"]
    assert [(r["backend"], r["geometry"]) for r in rows] == [("reference", False), ("extension", True),
                                                             ("extension", False)]
    for r in rows:
        assert r["note"] == "", r["note"]
        assert r["event_us"] > 0 and r["host_us"] > 0
        assert (r["graph_us"] is not None) == (r["backend"] == "extension")
        assert r["backend"] == "reference" or r["speedup_gpu"] > 0
