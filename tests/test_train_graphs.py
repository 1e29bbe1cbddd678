"""The training step in CUDA graphs (issue 18 item 4, training/graphs.py).

On the CPU, everything but the capture itself:
- padding the GT to a bucket's rows changes no loss and no gradient, bit for bit;
- the captured body (`step_on_static`: normalise, forward, losses, backward, SGD step on the
  static inputs) is the eager step's arithmetic: the same losses and weights, bit for bit;
- the cache around the capture, through the real loop, with a stand-in graph that re-runs the
  body on replay: which steps replay and which run eager (and why), the bound on graphs held,
  a new lr dropping them, the counts in metrics.jsonl; the run's losses and weights equal an
  eager run's;
- the flag's one-line refusals (CPU, accumulation, fp16) from the CLI.
On CUDA (bench/gpu-check.sh runs them): a graph run against eager runs, replays in sync debug
mode "error".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_run import atss
from test_train_leftovers import TINY, Lines, one_thread, photos, train_records  # noqa: F401 (a fixture)
from test_train_step_sync import _sync_is_an_error

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# (w, h): two landscape and two portrait sizes, so that batches of 2 take several padded shapes.
SIZES = [(160, 120), (150, 110), (120, 160), (100, 150)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("graphs"), SIZES * 3, seed=11)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().cpu().view(torch.int32)


def _equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(_bits(a), _bits(b))


def _cfg(root: Path, work: Path, **changes):
    from atss_cli.config import TrainConfig

    return TrainConfig(coco=str(root), work_dir=str(work),
                       **{**TINY, "flip_prob": 0.5, "batch_per_gpu": 2, "accumulate": 1, "epochs": 2, **changes})


def _prepared(cfg):
    from atss_cli.distributed.group import DistInfo
    from atss_cli.training.setup import prepare_run

    return prepare_run(cfg, Lines(), DistInfo(), resume=False)


def _batches(run, epoch: int = 0):
    run.sampler.load_state_dict({"epoch": epoch, "step": 0})
    return iter(run.loader)


# ---- padding rows --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "extension"])
def test_padding_the_ground_truth_to_a_bucket_changes_no_loss_and_no_gradient(backend):
    from atss_cli import ops
    from atss_cli.model import build_atss_preset
    from atss_cli.model.targets import pad_targets

    if backend == "extension" and not ops.extension.available():
        pytest.skip(f"the compiled kernels are not built: {ops.extension.reason()}")
    torch.manual_seed(3)
    model = build_atss_preset("tiny", 5, assign_backend=backend).train()
    images = torch.randn(3, 3, 128, 160)
    g = torch.Generator().manual_seed(4)
    targets = []
    for n, (h, w) in zip((7, 0, 2), ((128, 160), (96, 160), (128, 100))):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 5, (n,), generator=g),
                        "img_shape": (h, w)})

    def losses_and_grads(rows):
        model.zero_grad(set_to_none=True)
        outputs = model(images)
        if rows is None:
            losses = model.loss_from_outputs(*outputs, targets)
        else:
            boxes, labels, counts = pad_targets(targets, "cpu", rows=rows)
            assert boxes.shape[1] == rows
            extent = model.anchor_generator.extents(torch.tensor([t["img_shape"] for t in targets]), "cpu")
            losses = model.loss_from_padded(*outputs, boxes, labels, counts, extent)
        terms = torch.stack(list(losses.values()))
        terms.sum().backward()
        return terms.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    want, want_grads = losses_and_grads(None)       # padded to 7, the most GTs in an image
    assert want[1] > 0, "no positive anchor: the box terms would test nothing"
    for rows in (8, 64):
        got, got_grads = losses_and_grads(rows)
        assert _equal_bits(got, want), (rows, got, want)
        assert len(got_grads) == len(want_grads)
        assert all(_equal_bits(a, b) for a, b in zip(got_grads, want_grads)), rows


def test_pad_targets_refuses_rows_fewer_than_an_images_boxes():
    from atss_cli.errors import AtssError
    from atss_cli.model.targets import pad_targets

    with pytest.raises(AtssError, match="3 GT boxes in an image do not fit 2 padded rows"):
        pad_targets([{"boxes": torch.zeros(3, 4), "labels": torch.zeros(3, dtype=torch.int64)}], "cpu", rows=2)


def test_bucket_rows():
    from atss_cli.training.graphs import bucket_rows

    buckets = (8, 16, 128)
    assert [bucket_rows(n, buckets) for n in (0, 1, 8, 9, 16, 17, 128, 129)] == [8, 8, 8, 16, 16, 128, 128, None]


# ---- the captured body -----------------------------------------------------------------------------
def test_the_captured_body_is_the_eager_step_bit_for_bit(mixed, tmp_path, one_thread):
    """Three iterations of `train_iteration` against three of `step_on_static` fed the same batches
    through static input buffers (GT padded to 16 rows), from the same initial state."""
    from atss_cli.training.graphs import StaticInputs, step_on_static
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.run import Position
    from atss_cli.training.step import read_iteration, train_iteration

    eager = _prepared(_cfg(mixed, tmp_path / "eager"))
    body = _prepared(_cfg(mixed, tmp_path / "body"))
    for run in (eager, body):
        run.model.train()
    batches = list(_batches(eager))[:3]
    pos, stop, want = Position(), StopRequest(), []
    for batch in batches:
        result = train_iteration(eager, pos, iter([batch]), stop)
        want.append(read_iteration(result, eager.latest).losses)
        pos = Position(epoch=0, step=pos.step + 1, iteration=pos.iteration + 1)
    got = []
    for i, batch in enumerate(batches):
        for g in body.optimizer.param_groups:
            g["lr"] = body.plan.lr(body.cfg, iteration=i, epoch=0)
        static = StaticInputs.empty(batch["images"].shape, 16, torch.device("cpu"))
        static.fill(batch, body.model.num_classes)
        got.append(step_on_static(body, static).detach().double())
        body.optimizer.zero_grad(set_to_none=True)
    assert len({tuple(b["images"].shape) for b in batches}) > 1, "one padded shape only"
    for a, b in zip(got, want):
        assert torch.equal(a, b), (a, b)
    for (name, a), b in zip(eager.model.state_dict().items(), body.model.state_dict().values()):
        assert torch.equal(a, b), name


class HostTraffic:
    """The operators of a region that make a tensor out of host data (a Python literal) or read a
    value back to the host; either, inside a CUDA capture, fails or records a copy from host
    memory that the replay reads again later, when it holds other data."""

    MAKES = {"lift_fresh", "lift_fresh_copy", "_pin_memory"}
    READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose"}

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        seen = self.seen = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in HostTraffic.MAKES | HostTraffic.READS:
                    seen.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def test_the_captured_body_makes_nothing_from_host_data_and_reads_nothing_back(mixed, tmp_path):
    """What a capture records, seen on the CPU: every operator the body dispatches (forward,
    losses, backward, fused SGD, the anchors and normalising constants made before, as
    `GraphedSteps._capture` makes them)."""
    from atss_cli.training.graphs import StaticInputs, step_on_static
    from atss_cli.training.setup import build_optimizer

    run = _prepared(_cfg(mixed, tmp_path / "w"))
    run.model.train()
    # CUDA's optimizer: the fused kernel (on the CPU too), with momentum buffers made by a first step.
    run.optimizer = build_optimizer(run.model, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    batch = next(_batches(run))
    static = StaticInputs.empty(batch["images"].shape, 8, torch.device("cpu"))
    static.fill(batch, run.model.num_classes)
    step_on_static(run, static)           # the eager step before a capture: caches and momentum made
    run.optimizer.zero_grad(set_to_none=True)
    traffic = HostTraffic()
    with traffic.mode:
        terms = step_on_static(run, static)
    assert traffic.seen == [], traffic.seen
    assert torch.isfinite(terms).all()

    # The check itself sees what it looks for: the extents of a list of sizes are a literal.
    with traffic.mode:
        run.model.anchor_generator.extents([(96, 128)], "cpu")
        float(terms.detach()[0])
    assert traffic.seen == ["lift_fresh", "_local_scalar_dense"], traffic.seen


def test_static_inputs_check_the_targets_as_the_eager_step_does():
    from atss_cli.errors import AtssError
    from atss_cli.training.graphs import StaticInputs

    static = StaticInputs.empty((1, 3, 64, 64), 8, torch.device("cpu"))
    batch = {"images": torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "image_sizes": torch.tensor([[64, 64]]),
             "targets": [{"boxes": torch.tensor([[0.0, 0.0, float("nan"), 9.0]]), "labels": torch.tensor([0])}]}
    with pytest.raises(AtssError, match="target 0: boxes must be finite"):
        static.fill(batch, num_classes=2)


# ---- the cache, through the real loop, with a stand-in graph --------------------------------------
class Rerun:
    """A graph stand-in for the CPU: replay re-runs the captured body into the same output tensor
    (a real capture runs nothing either; its replay writes the output's fixed address), and leaves
    `.grad` as it found it (None), as a real replay does: it writes the graph's own gradients."""

    captured = 0

    def __init__(self, body, optimizer):
        self.body, self.optimizer = body, optimizer
        self.out = torch.empty(3)
        Rerun.captured += 1

    def replay(self):
        self.out.copy_(self.body())
        self.optimizer.zero_grad(set_to_none=True)


def rerun_capture(optimizer):
    def capture(body):
        graph = Rerun(body, optimizer)
        return graph, graph.out
    return capture


def _with_stand_in_graphs(monkeypatch, **graph_args):
    """`train` whose prepare_run attaches GraphedSteps with the CPU stand-in (the real flag refuses
    the CPU); returns the list each run made is appended to."""
    from atss_cli.training import train as loop
    from atss_cli.training.graphs import GraphedSteps

    made = []
    real = loop.prepare_run

    def prepare(cfg, reporter, info, resume):
        run = real(cfg, reporter, info, resume)
        run.graphs = GraphedSteps(run.device, capture=rerun_capture(run.optimizer), **graph_args)
        made.append(run)
        return run

    monkeypatch.setattr(loop, "prepare_run", prepare)
    return made


def _weights(work: Path) -> dict:
    return torch.load(work / "latest.pth", weights_only=False)["state_dict"]


def test_graph_runs_equal_eager_runs_and_count_every_eager_step(mixed, tmp_path, monkeypatch, one_thread):
    from atss_cli.training.train import train

    cfg = _cfg(mixed, tmp_path / "eager", warmup_iters=3)
    train(cfg, Lines())
    made = _with_stand_in_graphs(monkeypatch, max_graphs=16, box_buckets=(4, 8))
    train(cfg.replace(work_dir=str(tmp_path / "graphs")), Lines())
    run = made[0]
    graphs = run.graphs
    want, got = train_records(tmp_path / "eager"), train_records(tmp_path / "graphs")
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    for (name, a), b in zip(_weights(tmp_path / "eager").items(), _weights(tmp_path / "graphs").values()):
        assert torch.equal(a, b), name

    # 12 images, batch 2: 6 iterations an epoch, 12 in all. Each step at a new lr (the warm-up's)
    # is eager; after that a shape's first step is eager and its next captures, then replays.
    summary = graphs.summary()
    eager = summary["eager"]
    lrs = [r["lr"] for r in got]
    assert len(set(lrs[:3])) == 3 and len(set(lrs[3:])) == 1
    assert eager["new_lr"] == 1 + sum(a != b for a, b in zip(lrs, lrs[1:]))
    assert summary["replays"] + sum(eager.values()) == 12
    assert summary["captures"] == summary["graphs"] >= 1
    assert summary["replays"] >= summary["captures"]
    assert "boxes" not in eager and "cache_full" not in eager   # 2 GTs an image fit the 4 rows
    # The counts ride along in the log as each iteration was queued (log_interval 1).
    logged = [r["cuda_graphs"] for r in got]
    assert logged[-1] == summary
    assert [sum(c["eager"].values()) + c["replays"] for c in logged] == list(range(1, 13))
    assert all("memory_mb" not in r for r in got)   # CPU: no CUDA allocator figure
    # Each graph keeps the anchors its replays read, the very tensors the anchor cache made.
    for (shape, _), entry in graphs.graphs.items():
        anchors, positions = entry.keep[0]
        sizes = run.model.feature_sizes(*shape[-2:])
        assert anchors is run.model.anchor_generator.anchors(sizes, "cpu")
        assert positions is run.model.anchor_generator.grid(sizes, "cpu")[1]


def test_more_boxes_than_the_largest_bucket_and_a_full_cache_run_eager(mixed, tmp_path, monkeypatch, one_thread):
    from atss_cli.training.train import train

    # Buckets of 1 row: every batch (2 GTs an image) runs eager for its boxes.
    made = _with_stand_in_graphs(monkeypatch, max_graphs=16, box_buckets=(1,))
    train(_cfg(mixed, tmp_path / "boxes", warmup_iters=0, epochs=1), Lines())
    s = made[-1].graphs.summary()
    assert s == {"replays": 0, "captures": 0, "capture_s": 0.0, "graphs": 0, "eager": {"new_lr": 1, "boxes": 5}}

    # One graph at most: the other shapes stay eager once they are warm.
    made = _with_stand_in_graphs(monkeypatch, max_graphs=1, box_buckets=(8,))
    train(_cfg(mixed, tmp_path / "full", warmup_iters=0, epochs=3), Lines())
    s = made[-1].graphs.summary()
    assert s["graphs"] == s["captures"] == 1 and s["replays"] >= 1
    assert s["eager"].get("cache_full", 0) >= 1, s


def test_a_new_learning_rate_drops_the_graphs(mixed, tmp_path, monkeypatch, one_thread):
    from atss_cli.training.train import train

    # The lr steps down after epoch 1 (milestone 1): the graphs of the first lr are dropped and
    # the shapes, warm already, are captured again at the first step of theirs at the new lr.
    made = _with_stand_in_graphs(monkeypatch, max_graphs=16, box_buckets=(8,))
    before = Rerun.captured
    train(_cfg(mixed, tmp_path / "w", warmup_iters=0, epochs=3, milestones=(1,)), Lines())
    s = made[-1].graphs.summary()
    assert s["eager"]["new_lr"] == 2
    assert s["captures"] == Rerun.captured - before > s["graphs"]


# ---- the flag's refusals -------------------------------------------------------------------------------
FLAGS = ["--set", "depth=18", "--set", "fpn_channels=64", "--set", "head_channels=64", "--set", "stacked_convs=1",
         "--set", "scale=128,96", "--set", "workers=0", "--set", "val_split=", "--from-scratch",
         "--eval-interval", "0", "--epochs", "1"]


@pytest.mark.parametrize("extra, message", [
    (["--device", "cpu", "--accumulate", "1"], "--cuda-graphs needs a CUDA device, got cpu"),
    (["--device", "cpu", "--accumulate", "2"], "--cuda-graphs needs --accumulate 1, got 2"),
    (["--device", "cpu", "--accumulate", "1", "--amp", "fp16"], "--cuda-graphs needs --amp none or bf16, got fp16"),
])
def test_cuda_graphs_refuses_what_it_cannot_run_in_one_line(mixed, tmp_path, extra, message):
    proc = atss("train", "--coco", mixed, "--work-dir", tmp_path / "w", "--cuda-graphs", *FLAGS, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_train_cuda_graphs_on_the_cpu_is_one_line(tmp_path):
    proc = atss("bench", "train", "--device", "cpu", "--preset", "tiny", "--scale", "96x64", "--steps", "1",
                "--warmup", "0", "--images-dir", tmp_path / "img", "--cuda-graphs")
    assert proc.returncode == 2, proc.stderr
    assert "--cuda-graphs needs a CUDA device, got cpu" in proc.stderr and "Traceback" not in proc.stderr


# ---- CUDA ---------------------------------------------------------------------------------------------
def _cuda_cfg(root: Path, work: Path, **changes):
    return _cfg(root, work, device="cuda", warmup_iters=0, epochs=2, **changes)


@pytest.fixture
def deterministic():
    """As deterministic as CUDA allows (cuDNN's deterministic algorithms; a warning where an op has
    none: the FPN's nearest-upsampling backward adds with atomics), so that two eager runs can
    be compared bit for bit where the hardware lets them."""
    cudnn = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = cudnn


def _run_gap(a: Path, b: Path) -> tuple[float, float]:
    """(largest loss difference over the logged iterations, largest weight difference) of two runs."""
    la, lb = ([r["loss"] for r in train_records(w)] for w in (a, b))
    assert len(la) == len(lb)
    wa, wb = _weights(a), _weights(b)
    weights = max(float((x.float() - wb[k].float()).abs().max()) for k, x in wa.items() if x.is_floating_point())
    return max(abs(x - y) for x, y in zip(la, lb)), weights


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_graph_training_computes_what_eager_training_does(mixed, tmp_path, amp, deterministic):
    """Two epochs of 6 iterations over several padded shapes: eager twice, then in real CUDA
    graphs. A replay launches the eager step's kernels, so the graph run is as close to an eager
    run as two eager runs are to each other: bit for bit where those are, and within a small
    multiple of their gap where atomics make them differ."""
    from atss_cli.training.train import train

    cfg = _cuda_cfg(mixed, tmp_path / "eager", amp=amp)
    train(cfg, Lines())
    train(cfg.replace(work_dir=str(tmp_path / "eager2")), Lines())
    train(cfg.replace(work_dir=str(tmp_path / "graphs"), cuda_graphs=True), Lines())
    eager_gap = _run_gap(tmp_path / "eager", tmp_path / "eager2")
    graph_gap = _run_gap(tmp_path / "eager", tmp_path / "graphs")
    print(f"eager vs eager: losses {eager_gap[0]:.3g}, weights {eager_gap[1]:.3g}; "
          f"eager vs graphs: losses {graph_gap[0]:.3g}, weights {graph_gap[1]:.3g}")
    for e, g in zip(eager_gap, graph_gap):
        assert g <= 10 * e + (0.0 if e == 0 else 1e-6), (eager_gap, graph_gap)
    got = train_records(tmp_path / "graphs")
    counts = got[-1]["cuda_graphs"]
    assert counts["replays"] >= 4 and counts["captures"] >= 1, counts
    assert all(r["memory_mb"] > 0 for r in got)


@pytest.mark.cuda
@cuda
def test_cuda_graph_replays_make_no_host_sync(mixed, tmp_path):
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.run import Position
    from atss_cli.training.step import read_iteration, train_iteration

    run = _prepared(_cuda_cfg(mixed, tmp_path / "w", cuda_graphs=True, flip_prob=0.0))
    run.model.train()
    batch = next(_batches(run))
    stop, pos = StopRequest(), Position()
    for _ in range(2):   # the first step at the lr (eager), then the capture and its replay
        read_iteration(train_iteration(run, pos, iter([batch]), stop), run.latest)
        pos = Position(epoch=0, step=pos.step + 1, iteration=pos.iteration + 1)
    assert run.graphs.captures == 1
    torch.cuda.synchronize()
    previous = None
    with _sync_is_an_error():
        for _ in range(3):
            result = train_iteration(run, pos, iter([batch]), stop)
            assert result.graphed
            if previous is not None:
                read_iteration(previous, run.latest)
            previous = result
            pos = Position(epoch=0, step=pos.step + 1, iteration=pos.iteration + 1)
    assert torch.isfinite(read_iteration(previous, run.latest).losses).all()
    assert run.graphs.replays == 4
