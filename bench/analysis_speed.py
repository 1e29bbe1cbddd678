"""Speed of `atss eval --analyze` on a val2017-sized case against faster-coco-eval's own evaluation.

    .venv/bin/python bench/analysis_speed.py [--work /tmp/atss_analysis_bench] [--repeats 1]
        [--images 5000] [--dets-per-image 100] [--out bench/results/analysis_speed]

Generates (once, from a seed) a COCO ground truth of 5,000 images (~35k boxes, 80 classes, 1 % crowd)
and 500,000 detections (100 per image: jittered and relabelled copies of the boxes plus random ones),
`atss_cli.evaluation.analysis.synthetic.scale_case`. Then times, each in a fresh interpreter:

    baseline   faster-coco-eval: COCO(gt file) + loadRes(detections file) + evaluate() + accumulate()
    analysis   analyze(gt file, detections file, out, images_dir=None): the same COCOeval run, PR curves,
               TIDE, confusion matrix, figures, analysis.json and report.html (no gallery: no pictures)

and writes OUT.json and OUT.md (median of --repeats, the analysis's own stage times, the machine).
Target: analysis <= 2x baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r'''
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from faster_coco_eval import COCO, COCOeval_faster
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1])
    dt = gt.loadRes(sys.argv[2])
    t1 = time.perf_counter()
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
t2 = time.perf_counter()
print(json.dumps({"total": t2 - t0, "load": t1 - t0, "evaluate_accumulate": t2 - t1}))
'''

ANALYSIS = r'''
import json, sys, time
t0 = time.perf_counter()
from atss_cli.evaluation.analysis import analyze
r = analyze(sys.argv[1], sys.argv[2], sys.argv[3], images_dir=None)
t1 = time.perf_counter()
print(json.dumps({"total": t1 - t0, "stages": r["seconds"], "num_detections": r["inputs"]["num_detections"],
                  "num_annotations": r["inputs"]["num_annotations"], "mAP": r["coco"]["mAP"]}))
'''


def generate(work: Path, images: int, per_image: int) -> tuple[Path, Path]:
    gt_path, dets_path = work / f"gt_{images}.json", work / f"dets_{images}x{per_image}.json"
    if not (gt_path.exists() and dets_path.exists()):
        sys.path.insert(0, str(ROOT))
        from atss_cli.evaluation.analysis.synthetic import scale_case

        gt, records = scale_case(images, per_image)
        work.mkdir(parents=True, exist_ok=True)
        gt_path.write_text(json.dumps(gt))
        dets_path.write_text(json.dumps(records))
    return gt_path, dets_path


def run(script: str, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/atss_analysis_bench"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "analysis_speed")
    ap.add_argument("--markdown-only", action="store_true", help="Rewrite OUT.md from OUT.json.")
    a = ap.parse_args()
    if a.markdown_only:
        a.out.with_suffix(".md").write_text(markdown(json.loads(a.out.with_suffix(".json").read_text())))
        return
    gt_path, dets_path = generate(a.work, a.images, a.dets_per_image)
    base, ana = [], []
    for i in range(a.repeats):  # interleaved, so that machine load hits both alike
        base.append(run(BASELINE, gt_path, dets_path))
        ana.append(run(ANALYSIS, gt_path, dets_path, a.work / f"analysis_{i}"))
    b = statistics.median(r["total"] for r in base)
    t = statistics.median(r["total"] for r in ana)
    import faster_coco_eval
    import matplotlib
    import numpy

    result = {
        "case": {"images": a.images, "detections": ana[0]["num_detections"],
                 "annotations": ana[0]["num_annotations"], "mAP": ana[0]["mAP"]},
        "baseline_seconds": b, "analysis_seconds": t, "ratio": t / b, "target_ratio": 2.0,
        "pair_ratios": [x["total"] / y["total"] for x, y in zip(ana, base)],
        "runs": {"baseline": base, "analysis": ana},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_after": os.getloadavg(), "python": platform.python_version(),
                    "numpy": numpy.__version__, "matplotlib": matplotlib.__version__,
                    "faster_coco_eval": faster_coco_eval.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    a.out.with_suffix(".md").write_text(md)
    print(md)


def markdown(result: dict) -> str:
    base, ana = result["runs"]["baseline"], result["runs"]["analysis"]
    b, t = result["baseline_seconds"], result["analysis_seconds"]
    stages = sorted(ana, key=lambda r: r["total"])[len(ana) // 2]["stages"]
    load = ", ".join(f"{x:.1f}" for x in result["machine"]["load_average_after"])
    return "\n".join([
        f"# `analyze` vs faster-coco-eval, {result['case']['images']} images, "
        f"{result['case']['detections']} detections", "",
        f"{result['date']}, {result['machine']['cores']} cores, load average after the run {load} (shared "
        f"machine), median of {len(base)} interleaved pairs, each run in a fresh interpreter.", "",
        "| run | seconds |", "| --- | --- |",
        f"| faster-coco-eval COCO + loadRes + evaluate + accumulate | {b:.2f} |",
        f"| analyze (no gallery) | {t:.2f} |",
        f"| ratio of the medians | {t / b:.2f} (target <= 2) |",
        "| ratio per pair | " + ", ".join(f"{r:.2f}" for r in result["pair_ratios"]) + " |", "",
        "baseline runs: " + ", ".join(f"{r['total']:.2f} s (files loaded in {r['load']:.2f})" for r in base)
        + "; analysis runs: " + ", ".join(f"{r['total']:.2f} s" for r in ana) + ".", "",
        "analyze's stages (its median run): " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()), ""])

if __name__ == "__main__":
    main()
