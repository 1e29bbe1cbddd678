"""Final mAP after a short training, ours against MMDetection 3.3.0's, over several seeds.

    .venv/bin/python bench/train_map_side_by_side.py --mmdet-python ~/.cache/mmdet-oracle/venv/bin/python \
        [--seeds 0 1 2] [--epochs 6] [--train-images 160] [--val-images 40]

Not in CI: about an hour on 2 CPU cores with the defaults. For each seed, both sides start from
the same initial weights (our `build_atss` init under that seed) and train on the same batches
(our pipeline and sampler under that seed: order, flips, the epoch's joined leftovers), the way
bench/trajectory.py feeds them: ours is `atss_cli.training.train.train`, MMDetection's is its
`atss_r50_fpn_1x_coco` config edited to the demo's preset (ResNet-18, 64-channel FPN and head,
every stage and BatchNorm trained: frozen_stages=-1, norm_eval=False), its optimizer wrapper and
parameter schedulers (bench/mmdet_trajectory.py). Both final models are then evaluated by the
same code (MMDetection's final `state_dict` loaded into our model, whose predictions are
bit-identical to MMDetection's on fixed weights, tests/test_model_parity.py) on the generated
val split with COCOeval.

The verdict: the mean mAP difference between the sides against the seed-to-seed spread of each
side (sample standard deviation over seeds). The two sides agree when |mean difference| is
within 2 x the standard error of a difference of means, sqrt(s_a^2 / n + s_b^2 / n), and the
per-seed differences are printed too (the sides share each seed's data and init, so the paired
differences are what float summation order alone leaves). Written to
bench/results/train_map_side_by_side_<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trajectory  # noqa: E402

MODEL = {"depth": 18, "fpn_channels": 64, "head_channels": 64, "stacked_convs": 2, "frozen_stages": -1,
         "norm_eval": False}
SIZE = 192


def run_seed(seed: int, args, data: Path, num_classes: int, work: Path) -> dict:
    from atss_cli.config import TrainConfig
    from atss_cli.data import build_train_loader, load_split
    from atss_cli.evaluation.evaluate import evaluate
    from atss_cli.training.train import SilentReporter, train
    from atss_cli.model import build_atss

    torch.manual_seed(seed)
    init = work / f"init_{seed}.pth"
    torch.save({"state_dict": build_atss(num_classes=num_classes, **MODEL).state_dict()}, init)
    cfg = TrainConfig(coco=str(data), val_split="", eval_interval=0, load_from=str(init), **MODEL,
                      scale=(SIZE, SIZE), workers=0, batch_per_gpu=args.batch, accumulate=1, epochs=args.epochs,
                      milestones=(args.epochs - 2,), warmup_iters=args.warmup, warmup_ratio=0.001, lr=args.lr,
                      save_every_iters=0, checkpoint_interval=0, log_interval=10, device="cpu", seed=seed,
                      work_dir=str(work / f"atss_{seed}"))
    loader, sampler = build_train_loader(load_split(data, "train2017"), batch_per_rank=args.batch, seed=seed,
                                         workers=0, scale=(SIZE, SIZE))
    batches = []
    for epoch in range(args.epochs):
        sampler.load_state_dict({"epoch": epoch, "step": 0})
        for b in loader:
            batches.append({"images": b["images"], "targets": [
                {"boxes": t["boxes"], "labels": t["labels"], "img_shape": list(t["img_shape"]),
                 "ori_shape": list(t["ori_shape"]), "scale_factor": [float(s) for s in t["scale_factor"]],
                 "flip": bool(f)} for t, f in zip(b["targets"], b["flipped"])]})
    epoch_length = len(sampler)

    t0 = time.time()
    train(cfg, SilentReporter())
    ours_s = time.time() - t0
    inputs = {"init": init, "num_classes": num_classes, "depth": MODEL["depth"]}
    t0 = time.time()
    theirs = trajectory.run_mmdet(args.mmdet_python, inputs, batches, epoch_length, work / f"mmdet_{seed}",
                                  extra={"model": MODEL, "warmup_iters": args.warmup,
                                         "milestones": [args.epochs - 2], "lr": args.lr})
    mmdet_s = time.time() - t0

    val = load_split(data, "val2017")
    result = {"seed": seed, "iterations": len(batches), "atss_train_s": ours_s, "mmdet_train_s": mmdet_s}
    for side, state in (("atss", torch.load(work / f"atss_{seed}" / "latest.pth", weights_only=False)["state_dict"]),
                        ("mmdet", theirs["state_dict"])):
        model = build_atss(num_classes=num_classes, **MODEL)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model, val, device=torch.device("cpu"), scale=(SIZE, SIZE), workers=0)
        result[f"{side}_map"] = metrics["bbox_mAP"] if "bbox_mAP" in metrics else metrics.get("mAP")
        result[f"{side}_map50"] = metrics.get("bbox_mAP_50", metrics.get("mAP_50"))
        result[f"{side}_metrics"] = metrics
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mmdet-python", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-images", type=int, default=160)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from atss_cli.data import generate_synthetic, load_split

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        generate_synthetic(data, train_images=args.train_images, val_images=args.val_images, seed=0, size=SIZE)
        num_classes = load_split(data, "train2017").num_classes
        for seed in args.seeds:
            rows.append(run_seed(seed, args, data, num_classes, work))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("metrics")}), flush=True)
    a = [r["atss_map"] for r in rows]
    b = [r["mmdet_map"] for r in rows]
    n = len(rows)
    sa = statistics.stdev(a) if n > 1 else float("nan")
    sb = statistics.stdev(b) if n > 1 else float("nan")
    diff = statistics.mean(a) - statistics.mean(b)
    se = (sa ** 2 / n + sb ** 2 / n) ** 0.5
    verdict = abs(diff) <= 2 * se if n > 1 else None
    date = datetime.date.today().isoformat()
    md = [f"# Final mAP after a short training: atss vs MMDetection ({date})", "",
          f"R18 preset (64-channel FPN and head, all stages and BatchNorm trained), {SIZE} px, {args.epochs} epochs of "
          f"{args.train_images} generated images at batch {args.batch}, lr {args.lr}, warmup {args.warmup}, "
          f"{args.val_images} val images; seeds {args.seeds}.", "",
          "| seed | iterations | atss mAP | MMDetection mAP | difference | atss mAP50 | MMDetection mAP50 |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['seed']} | {r['iterations']} | {r['atss_map']:.4f} | {r['mmdet_map']:.4f} | "
                  f"{r['atss_map'] - r['mmdet_map']:+.4f} | {r['atss_map50']:.4f} | {r['mmdet_map50']:.4f} |")
    md += ["", f"mean difference {diff:+.4f}; seed-to-seed standard deviation atss {sa:.4f}, MMDetection {sb:.4f}; "
           f"2 x standard error of the difference of means {2 * se:.4f}: "
           f"{'agree' if verdict else 'DIFFER' if verdict is not None else 'n/a'}"]
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_map_side_by_side_{date}.md").write_text(text)
    (out / f"train_map_side_by_side_{date}.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "mean_diff": diff, "std_atss": sa, "std_mmdet": sb,
         "agree": verdict}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
