"""A training trajectory, ours against MMDetection 3.3.0's, iteration by iteration.

    .venv/bin/python bench/trajectory.py --mmdet-python ~/.cache/mmdet-oracle/venv/bin/python \
        [--iters 40] [--depth 50] [--record]

Both sides start from the same weights (our `build_atss` init, seed 0, saved once) and train on
the same batches: the images, flips and targets our training pipeline produced (1 process,
2 images a batch, our aspect-grouped sampler, no accumulation), fed as they are to MMDetection's
`model.loss` (bench/mmdet_trajectory.py). Our side is `atss_cli.training.train.train` itself (its
optimizer, lr schedule and step); MMDetection's is its `atss_r50_fpn_1x_coco` config: the model,
`build_optim_wrapper` (DefaultOptimWrapperConstructor) and its two parameter schedulers. The
schedule keeps its shape but shrinks: epochs of 8 iterations (16 generated images), milestones
[3, 4] (lr x 0.1 from iteration 24, x 0.01 from 32), warmup over the first 10 iterations, so 40
iterations cross the end of warmup and both steps. The lr is the recipe's 0.01 for 16 images
scaled to 2 by the linear rule, 0.00125 (what `--scale-lr` gives): at 0.01 the randomly
initialised R50 diverges (its loss climbs from 3.4 to 55 within 28 iterations), which amplifies
the float32 summation-order noise chaotically and says little about the rules compared.

The model is ResNet-50 at a small input (the synthetic images at 64 px, resized to fit 123 x 91):
MMDetection's config model unchanged, so the comparison runs its Bottleneck backbone with the
frozen stem and first stage and BatchNorm in eval mode, the 256-channel FPN and the GroupNorm
head; only the input is small enough for the CPU.

Printed and written to bench/results/trajectory_<date>.{md,json}: per iteration both lrs and
losses and their differences, and at the end the largest relative difference of the weights and
of the SGD momentum buffers. `--record` also writes MMDetection's trajectory (lrs, losses, and
per-tensor summaries of its final weights and momentum buffers) to tests/data/mmdet_trajectory/,
which tests/test_trajectory_mmdet.py compares our run against without the oracle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's atss_cli, not another installed one
FIXTURE = ROOT / "tests" / "data" / "mmdet_trajectory" / "expected.pt"
SETUP = {"train_images": 16, "image_size": 64, "data_seed": 0, "seed": 0, "scale": (123, 91),
         "batch": 2, "warmup_iters": 10, "milestones": (3, 4), "lr": 0.00125, "momentum": 0.9,
         "weight_decay": 1e-4, "warmup_ratio": 0.001}
LOSS_KEYS = ("loss_cls", "loss_bbox", "loss_centerness")
SMALL = 1024   # tensors up to this many elements are recorded whole, larger ones as summaries
# The first updates are compared on their own: after 2 iterations (the first sets each momentum
# buffer to its gradient, the second applies momentum) the two sides' float noise is still
# ~1e-7, so any rule of the optimizer (which parameters decay, each group's lr, momentum,
# dampening) shows in them at once, where 40 iterations of this small-batch run amplify
# summation-order noise chaotically (bench/README.md).
EARLY_ITERS = 2


def make_inputs(work: Path, depth: int = 50) -> dict:
    """The generated dataset and the common initial weights under `work`; returns setup facts."""
    from atss_cli.data import generate_synthetic, load_split
    from atss_cli.model import build_atss

    data = work / "data"
    generate_synthetic(data, train_images=SETUP["train_images"], val_images=1, seed=SETUP["data_seed"],
                       size=SETUP["image_size"])
    cache = load_split(data, "train2017")
    torch.manual_seed(SETUP["seed"])
    model = build_atss(num_classes=cache.num_classes, depth=depth)
    torch.save({"state_dict": model.state_dict()}, work / "init.pth")
    return {"data": data, "init": work / "init.pth", "num_classes": cache.num_classes, "depth": depth}


def train_config(inputs: dict, work: Path, iters: int):
    from atss_cli.config import TrainConfig

    return TrainConfig(coco=str(inputs["data"]), val_split="", eval_interval=0, load_from=str(inputs["init"]),
                       depth=inputs["depth"], scale=SETUP["scale"], workers=0, batch_per_gpu=SETUP["batch"],
                       accumulate=1, epochs=-(-iters // 8), milestones=SETUP["milestones"],
                       warmup_iters=SETUP["warmup_iters"], warmup_ratio=SETUP["warmup_ratio"], lr=SETUP["lr"],
                       momentum=SETUP["momentum"], weight_decay=SETUP["weight_decay"], save_every_iters=0,
                       checkpoint_interval=0, log_interval=1, max_iters=iters, device="cpu", seed=SETUP["seed"],
                       work_dir=str(work))


def our_batches(inputs: dict, iters: int) -> tuple[list[dict], int]:
    """The batches our training loop reads (same loader, seed and epochs), and the epoch length."""
    from atss_cli.data import build_train_loader, load_split

    loader, sampler = build_train_loader(load_split(inputs["data"], "train2017"), batch_per_rank=SETUP["batch"],
                                         seed=SETUP["seed"], workers=0, scale=SETUP["scale"])
    out, epoch = [], 0
    while len(out) < iters:
        sampler.load_state_dict({"epoch": epoch, "step": 0})
        for b in loader:
            out.append({"images": b["images"],
                        "targets": [{"boxes": t["boxes"], "labels": t["labels"], "img_shape": list(t["img_shape"]),
                                     "ori_shape": list(t["ori_shape"]),
                                     "scale_factor": [float(s) for s in t["scale_factor"]], "flip": bool(f)}
                                    for t, f in zip(b["targets"], b["flipped"])]})
        epoch += 1
    return out[:iters], len(sampler)


def early_updates(weights: dict, momentum: dict, init: dict) -> dict:
    """The first EARLY_ITERS iterations' updates of the trained parameters (weights minus the
    initial ones) and their momentum buffers, by name."""
    return {"update": {n: weights[n].double() - init[n].double() for n in momentum},
            "momentum": {n: b.double() for n, b in momentum.items()}}


def our_early(inputs: dict, work: Path) -> dict:
    """Our updates after EARLY_ITERS iterations (a run stopped there)."""
    ours = our_trajectory(inputs, work, EARLY_ITERS)
    init = torch.load(inputs["init"], weights_only=True)["state_dict"]
    return early_updates(ours["weights"], ours["momentum"], init)


def our_trajectory(inputs: dict, work: Path, iters: int) -> dict:
    """Train with atss_cli itself; lrs, losses, final weights and momentum buffers by name."""
    from atss_cli.training.train import SilentReporter, train
    from atss_cli.model import build_atss

    cfg = train_config(inputs, work, iters)
    train(cfg, SilentReporter())
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["kind"] == "train"]
    state = torch.load(work / "latest.pth", map_location="cpu", weights_only=False)
    names = [n for n, p in build_atss(num_classes=inputs["num_classes"], **cfg.model_kwargs).named_parameters()
             if p.requires_grad]
    opt = state["optimizer"]
    order = opt["param_groups"][0]["params"]
    momentum = {names[i]: opt["state"][idx]["momentum_buffer"] for i, idx in enumerate(order) if idx in opt["state"]}
    params = dict(build_atss(num_classes=inputs["num_classes"], **cfg.model_kwargs).named_parameters())
    weights = {n: state["state_dict"][n] for n in params}
    return {"lrs": [r["lr"] for r in records],
            "losses": [{**{k: r[k] for k in LOSS_KEYS}, "loss": r["loss"]} for r in records],
            "weights": weights, "momentum": momentum}


def run_mmdet(mmdet_python: str, inputs: dict, batches: list[dict], epoch_length: int, work: Path,
              extra: dict | None = None) -> dict:
    """MMDetection's trajectory on `batches` (bench/mmdet_trajectory.py in its own python); `extra`
    overrides setup.json entries (warmup_iters, milestones, lr, a smaller "model")."""
    d = work / "mmdet_inputs"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": torch.load(inputs["init"], weights_only=True)["state_dict"]}, d / "init.pth")
    torch.save(batches, d / "batches.pt")
    setup = {"num_classes": inputs["num_classes"], "epoch_length": epoch_length,
             "warmup_iters": SETUP["warmup_iters"], "milestones": list(SETUP["milestones"]), "lr": SETUP["lr"],
             "early_iters": EARLY_ITERS, **(extra or {})}
    (d / "setup.json").write_text(json.dumps(setup))
    out = work / "mmdet_trajectory.pt"
    subprocess.run([mmdet_python, str(ROOT / "bench" / "mmdet_trajectory.py"), "--inputs", str(d), "--out", str(out),
                    "--depth", str(inputs["depth"])], check=True)
    return torch.load(out, map_location="cpu", weights_only=True)


def projection(name: str, t: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return float((t.double().flatten() * torch.randn(t.numel(), generator=g, dtype=torch.float64)).sum())


def summarise(tensors: dict, small: int = SMALL) -> dict:
    """name -> the tensor itself (up to `small` elements) or (sum, sum of squares, a seeded random
    projection) in float64."""
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        d = t.double()
        out[name] = t.clone() if t.numel() <= small else torch.tensor(
            [float(d.sum()), float((d * d).sum()), projection(name, d)], dtype=torch.float64)
    return out


def compare(ours: dict, theirs: dict, init: dict | None = None) -> dict:
    """Per iteration lr and loss differences; final weights and momentum, largest relative differences."""
    rows = []
    for i, (lr_a, lr_b, la, lb) in enumerate(zip(ours["lrs"], theirs["lrs"], ours["losses"], theirs["losses"])):
        rows.append({"iteration": i + 1, "lr_atss": lr_a, "lr_mmdet": lr_b, "lr_diff": abs(lr_a - lr_b),
                     "loss_atss": la["loss"], "loss_mmdet": lb["loss"],
                     "loss_rel_diff": abs(la["loss"] - lb["loss"]) / abs(lb["loss"]),
                     **{f"{k}_rel_diff": abs(la[k] - lb[k]) / max(abs(lb[k]), 1e-12) for k in LOSS_KEYS}})

    def worst(a: dict, b: dict, ref: dict | None = None) -> tuple[float, str, float]:
        top, where, top_upd = 0.0, "", 0.0
        for name, tb in b.items():
            if name not in a:
                continue
            d = float((a[name].double() - tb.double()).abs().max())
            scale = float(tb.double().abs().max()) or 1.0
            if d / scale > top:
                top, where = d / scale, name
            if ref is not None and name in ref:
                upd = float((tb.double() - ref[name].double()).abs().max())
                if upd > 0:
                    top_upd = max(top_upd, d / upd)
        return top, where, top_upd

    trained = {n: t for n, t in theirs["weights"].items() if n in theirs["momentum"]}
    w, w_at, w_upd = worst(ours["weights"], trained, init)
    per_tensor = []
    for name, tb in trained.items():
        d = float((ours["weights"][name].double() - tb.double()).abs().max())
        upd = float((tb.double() - init[name].double()).abs().max()) if init is not None else float("nan")
        per_tensor.append({"name": name, "max_abs_diff": d, "max_abs": float(tb.abs().max()), "max_abs_update": upd,
                           "diff_over_update": d / upd if upd else float("nan")})
    per_tensor.sort(key=lambda r: -r["diff_over_update"] if r["diff_over_update"] == r["diff_over_update"] else 0)
    m, m_at, _ = worst(ours["momentum"], theirs["momentum"])
    frozen = [n for n in theirs["weights"] if n not in theirs["momentum"]]
    frozen_diff = max((float((ours["weights"][n] - theirs["weights"][n]).abs().max()) for n in frozen), default=0.0)
    early = {}
    if "early" in ours and theirs.get("early") and init is not None:
        mine = ours["early"]
        them = early_updates(theirs["early"]["weights"], theirs["early"]["momentum"], init)
        early = {"early_update_rel": worst(mine["update"], them["update"])[:2],
                 "early_momentum_rel": worst(mine["momentum"], them["momentum"])[:2]}
    return {**early, "rows": rows, "weights_rel": w, "weights_at": w_at, "weights_rel_to_update": w_upd,
            "momentum_rel": m, "momentum_at": m_at, "frozen_max_abs": frozen_diff,
            "momentum_names_equal": sorted(ours["momentum"]) == sorted(theirs["momentum"]),
            "lr_max_diff": max(r["lr_diff"] for r in rows), "worst_tensors": per_tensor[:8]}


def report_md(result: dict, meta: dict) -> str:
    lines = [f"# Training trajectory: atss vs MMDetection {meta['versions'].get('mmdet', '?')} ({meta['date']})", "",
             f"R{meta['depth']}-FPN ATSS, {meta['iters']} iterations, 1 process x {SETUP['batch']} images, epochs of "
             f"{meta['epoch_length']} iterations, warmup {SETUP['warmup_iters']}, milestones "
             f"{list(SETUP['milestones'])}, input fit in {SETUP['scale'][0]}x{SETUP['scale'][1]}; "
             f"{meta['cpu']}, torch {meta['versions'].get('torch')}; {meta['seconds']:.0f} s in all.", "",
             f"- optimizer: {meta['constructor']}; parameter groups {meta['param_groups']}",
             f"- schedulers: {', '.join(meta['schedulers'])}",
             f"- largest lr difference: {result['lr_max_diff']:.3g}",
             *([f"- after the first {EARLY_ITERS} iterations: updates (weights minus initial) within "
                f"{result['early_update_rel'][0]:.3g} of each tensor's largest update (at "
                f"`{result['early_update_rel'][1]}`), momentum buffers within {result['early_momentum_rel'][0]:.3g} "
                f"(at `{result['early_momentum_rel'][1]}`)"] if "early_update_rel" in result else []),
             f"- final weights: largest relative difference {result['weights_rel']:.3g} (max |diff| / max |w|, "
             f"at `{result['weights_at']}`); as a share of MMDetection's own update from the initial weights: "
             f"{result['weights_rel_to_update']:.3g}; frozen parameters max |diff| {result['frozen_max_abs']:.3g}",
             f"- final momentum buffers: largest relative difference {result['momentum_rel']:.3g} "
             f"(at `{result['momentum_at']}`); the same parameters have one: {result['momentum_names_equal']}", "",
             "Tensors whose final difference is the largest share of MMDetection's update (max |diff| / max |update|):", "",
             *[f"- `{r['name']}`: max |diff| {r['max_abs_diff']:.3g}, max |update| {r['max_abs_update']:.3g}, "
               f"max |w| {r['max_abs']:.3g}, share {r['diff_over_update']:.3g}" for r in result["worst_tensors"]], "",
             "| it | lr atss | lr mmdet | loss atss | loss mmdet | rel diff | cls | bbox | ctr |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['iteration']} | {r['lr_atss']:.9g} | {r['lr_mmdet']:.9g} | {r['loss_atss']:.9g} | "
                     f"{r['loss_mmdet']:.9g} | {r['loss_rel_diff']:.2e} | {r['loss_cls_rel_diff']:.2e} | "
                     f"{r['loss_bbox_rel_diff']:.2e} | {r['loss_centerness_rel_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mmdet-python", required=True)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--record", action="store_true", help="write MMDetection's trajectory to tests/data")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--lr", type=float, default=SETUP["lr"], help="both sides' base lr (default %(default)s)")
    args = ap.parse_args(argv)
    SETUP["lr"] = args.lr
    torch.set_num_threads(2)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = make_inputs(work, args.depth)
        batches, epoch_length = our_batches(inputs, args.iters)
        theirs = run_mmdet(args.mmdet_python, inputs, batches, epoch_length, work)
        ours = our_trajectory(inputs, work / "atss", args.iters)
        ours["early"] = our_early(inputs, work / "atss_early")
        init = torch.load(inputs["init"], weights_only=True)["state_dict"]
        result = compare(ours, theirs, init)
        if args.record:
            FIXTURE.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"setup": {**SETUP, "depth": args.depth, "iters": args.iters, "epoch_length": epoch_length,
                                  "num_classes": inputs["num_classes"]},
                        "image_sums": [float(b["images"].double().sum()) for b in batches],
                        "init_sums": summarise({n: init[n] for n in theirs["weights"]}, small=0),
                        "lrs": theirs["lrs"], "losses": theirs["losses"],
                        "early": {k: summarise(v) for k, v in early_updates(
                            theirs["early"]["weights"], theirs["early"]["momentum"], init).items()},
                        "weights": summarise(theirs["weights"]), "momentum": summarise(theirs["momentum"]),
                        "param_groups": theirs["param_groups"], "versions": theirs["versions"]}, FIXTURE)
    from atss_cli.benchmarks import cpu_name

    meta = {"date": datetime.date.today().isoformat(), "depth": args.depth, "iters": args.iters,
            "epoch_length": epoch_length, "versions": theirs["versions"], "cpu": cpu_name(),
            "constructor": theirs["constructor"], "schedulers": theirs["schedulers"],
            "param_groups": theirs["param_groups"], "seconds": time.time() - t0}
    md = report_md(result, meta)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"trajectory_r{args.depth}_{args.iters}it_lr{args.lr:g}_{meta['date']}"
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, **result}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
