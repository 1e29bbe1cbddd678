"""A training step makes no host sync (issue 18, items 2 and 3).

- `train_iteration` reads no value of its own iteration on the host: run with images of a tensor
  subclass that raises on every host read (`.cpu()`, `.item()`, `bool()`, `float()`, ...), which
  every value computed from them inherits (the losses, the reduced [4] with the stop flag).
- The step's device work (normalising, forward, losses; and the backward AOTAutograd traces)
  compiles with `torch.compile(fullgraph=True, backend="aot_eager")` and gives the eager values.
- uint8 batches normalised and padded by `normalize_padded` equal the CPU path's float32 input
  bit for bit, on real decoded photos of both orientations, flipped and not.
- On CUDA: whole training steps (and the late reads) under `set_sync_debug_mode("error")`; the same
  normalisation on the GPU; fused SGD against the foreach path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from compile_check import eager_and_compiled

from atss_cli.data import load_split
from atss_cli.data.dataset import TrainDataset, collate
from atss_cli.data.transforms import normalize_padded
from atss_cli.training.setup import build_optimizer, fused_sgd_fits
from test_train_leftovers import TINY, Lines, photos

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SIZES = [(160, 120), (120, 160), (150, 100), (90, 140)]  # (w, h): landscape and portrait


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("mixed"), SIZES * 2, seed=5)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)  # float equality that also tells -0.0 from 0.0


def _batches_both_ways(root: Path, flip: float, keys) -> tuple[dict, dict]:
    cache = load_split(root, "train2017")
    samples = [[TrainDataset(cache, scale=(128, 96), flip_prob=flip, uint8_images=u)[k] for k in keys]
               for u in (False, True)]
    return collate(samples[0]), collate(samples[1])


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda])])
def test_uint8_batch_normalised_on_its_device_is_the_cpu_input_bit_for_bit(mixed, flip, device):
    # One batch of every orientation: each image padded to the batch's largest extent.
    want, raw = _batches_both_ways(mixed, flip, range(len(SIZES)))
    assert raw["images"].dtype == torch.uint8 and want["images"].dtype == torch.float32
    assert raw["images"].shape == want["images"].shape
    assert [tuple(s) for s in raw["image_sizes"].tolist()] == [t["img_shape"] for t in want["targets"]]
    assert len({t["img_shape"] for t in want["targets"]}) > 1, "one extent only: the padding is not tested"
    got = normalize_padded(raw["images"].to(device), raw["image_sizes"].to(device)).cpu()
    assert got.dtype == torch.float32
    assert torch.equal(_bits(got), _bits(want["images"]))


def _run(root: Path, work: Path, **changes):
    """A real training run's state (prepare_run), one process."""
    from atss_cli.config import TrainConfig
    from atss_cli.distributed.group import DistInfo
    from atss_cli.training.setup import prepare_run

    cfg = TrainConfig(coco=str(root), work_dir=str(work), **{**TINY, "flip_prob": 0.5, "batch_per_gpu": 2,
                                                             "accumulate": 1, "epochs": 1, **changes})
    return prepare_run(cfg, Lines(), DistInfo(), resume=False)


def _batches(run):
    run.sampler.load_state_dict({"epoch": 0, "step": 0})
    return iter(run.loader)


class HostRead(AssertionError):
    pass


READS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__"}


class Watched(torch.Tensor):
    """Any value computed from these images is one too; while `armed`, reading one on the host raises."""

    armed = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if cls.armed and (name in READS or (name == "to" and _blocking_copy_to_host(args[1:], kwargs))):
            raise HostRead(f"{name} on a value of the iteration in progress")
        return super().__torch_function__(func, types, args, kwargs)


def _blocking_copy_to_host(args, kwargs) -> bool:
    targets = [a for a in [*args, kwargs.get("device")] if isinstance(a, (str, torch.device))]
    return any(torch.device(t).type == "cpu" for t in targets) and not kwargs.get("non_blocking", False)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_train_iteration_reads_no_value_of_its_own_iteration(mixed, tmp_path, accumulate):
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.run import Position
    from atss_cli.training.step import read_iteration, train_iteration

    run = _run(mixed, tmp_path / "w", accumulate=accumulate)
    run.model.train()
    watched = (dict(b, images=b["images"].as_subclass(Watched)) for b in _batches(run))
    stop, pos, results = StopRequest(), Position(), []
    for _ in range(2):
        Watched.armed = True
        try:
            result = train_iteration(run, pos, watched, stop)
        finally:
            Watched.armed = False
        pos = Position(epoch=0, step=pos.step + result.micro_steps, iteration=pos.iteration + 1)
        results.append(result)
    # The values were computed from the watched images (so a read would have been seen), and the
    # late read gives them.
    assert all(isinstance(r.values.get(), Watched) for r in results)
    values = [read_iteration(r, run.latest) for r in results]
    assert all(torch.isfinite(v.losses).all() and v.losses[0] > 0 and not v.stop for v in values)


def test_step_device_work_compiles_whole_and_gives_the_eager_values(mixed, tmp_path, monkeypatch):
    """Normalising the uint8 batch, the forward pass and the losses in one graph (fullgraph fails
    on any host read or Python branch on a tensor value); AOTAutograd traces the backward too.
    The model's check of host targets (label range, finite boxes: host work on host tensors,
    no device value) runs eagerly first and is left out of the graph."""
    from atss_cli import ops
    from atss_cli.model import detector
    from atss_cli.training.step import batch_on_device, micro_batch_losses

    if not ops.extension.available():
        pytest.skip(f"the compiled kernels are not built: {ops.extension.reason()}")
    run = _run(mixed, tmp_path / "w")
    run.model.train()
    batch = next(_batches(run))
    assert batch["images"].dtype == torch.uint8
    detector.check_targets(batch["targets"], run.model.num_classes)
    monkeypatch.setattr(detector, "check_targets", lambda targets, num_classes: None)

    def device_work(pixels, extents, targets):
        images, targets = batch_on_device({"images": pixels, "image_sizes": extents, "targets": targets},
                                          torch.device("cpu"))
        return micro_batch_losses(run.loss_module, images, targets, None, None, None)

    def losses_and_grads(fn):
        run.optimizer.zero_grad(set_to_none=True)
        terms = fn(batch["images"], batch["image_sizes"], batch["targets"])
        terms.sum().backward()
        return terms.detach(), [p.grad.clone() for p in run.model.parameters() if p.requires_grad]

    (want, want_grads), (got, got_grads) = eager_and_compiled(losses_and_grads, device_work)
    assert want[1] > 0, "no positive anchor: the box losses would test nothing"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def _sgd_trajectory(device: str, fused: bool, steps: int = 4) -> list[torch.Tensor]:
    """The recipe's SGD on the tiny detector's parameters, fed the same gradients and lr schedule."""
    from atss_cli.model import build_atss_preset

    torch.manual_seed(0)
    model = build_atss_preset("tiny", 3).to(device)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=fused)
    assert len(opt.param_groups) == 1 and bool(opt.param_groups[0]["fused"]) is fused
    g = torch.Generator().manual_seed(1)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(steps):
        opt.param_groups[0]["lr"] = 0.01 * (step + 1) / steps  # changed every iteration, as the warmup does
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device)
        opt.step()
    return [p.detach().cpu() for p in params]


def _ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance in float32 steps between same-signed entries of a and b."""
    assert bool(((a >= 0) == (b >= 0)).all()), "a weight changed sign between the two"
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())


def _assert_same_update(fused: list[torch.Tensor], default: list[torch.Tensor], steps: int = 4) -> None:
    """The same update up to the rounding of a fused multiply-add: at most one float32 step per
    SGD step apart (measured on the CPU: 1 weight of 12M, 1 step apart, after 4 steps)."""
    ulps = max(_ulps(a, b) for a, b in zip(fused, default))
    differ = sum(int((a != b).sum()) for a, b in zip(fused, default))
    total = sum(a.numel() for a in fused)
    print(f"fused SGD vs the default: {differ} of {total} weights differ, by at most {ulps} float32 steps")
    assert ulps <= steps and differ <= total * 1e-3


def test_fused_sgd_is_the_recipe_update_on_the_cpu():
    """Fused SGD gives the default loop's weights up to rounding on the CPU (the training itself
    keeps the loop there, MMDetection's path: fused is for CUDA)."""
    _assert_same_update(_sgd_trajectory("cpu", True), _sgd_trajectory("cpu", False))


def test_fused_sgd_only_where_it_fits():
    assert fused_sgd_fits(torch.device("cuda"), "none") and fused_sgd_fits(torch.device("cuda"), "bf16")
    # fp16: the fused kernel mishandles GradScaler's skipped steps (setup.fused_sgd_fits says how).
    assert not fused_sgd_fits(torch.device("cuda"), "fp16")
    assert not fused_sgd_fits(torch.device("cpu"), "none")


@pytest.mark.cuda
@cuda
def test_fused_sgd_against_foreach_on_cuda():
    """On CUDA the default of torch.optim.SGD is the foreach path (MMDetection's there)."""
    _assert_same_update(_sgd_trajectory("cuda", True), _sgd_trajectory("cuda", False))


@contextlib.contextmanager
def _sync_is_an_error():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_whole_training_steps_make_no_host_sync_on_cuda(mixed, tmp_path, amp):
    """Three whole iterations (upload, normalising, forward, losses, backward, loss all_reduce,
    fused SGD step) and the late reads of the ones before, in sync debug mode "error"."""
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.run import Position
    from atss_cli.training.step import read_iteration, train_iteration

    run = _run(mixed, tmp_path / "w", device="cuda", amp=amp)
    assert run.optimizer.param_groups[0]["fused"] is True
    run.model.train()
    # The loader's batches are made (and pinned) before: its worker-less __next__ is host work.
    batches = list(_batches(run))
    stop, pos = StopRequest(), Position()
    first = train_iteration(run, pos, iter(batches[:1]), stop)  # first-call set-up (cuDNN, cuBLAS)
    read_iteration(first, run.latest)
    pos = Position(epoch=0, step=1, iteration=1)
    torch.cuda.synchronize()
    previous = None
    with _sync_is_an_error():
        for batch in batches[1:4]:
            result = train_iteration(run, pos, iter([batch]), stop)
            if previous is not None:
                read_iteration(previous, run.latest)   # waits on the previous iteration's event only
            previous = result
            pos = Position(epoch=0, step=pos.step + 1, iteration=pos.iteration + 1)
    assert torch.isfinite(read_iteration(previous, run.latest).losses).all()


class Events(Lines):
    """What the loop did, in order: ("queued", n), ("logged", n), ("saved", n)."""

    def __init__(self):
        super().__init__()
        self.events = []

    def iteration(self, record):
        self.events.append(("logged", record["iteration"]))


def _watch_the_loop(monkeypatch, events: Events, stop_at: int | None = None):
    import signal

    from atss_cli.training import train as loop

    real_step, real_save = loop.train_iteration, loop.save_checkpoint

    def step(run, pos, batches, stop):
        if pos.iteration + 1 == stop_at:
            stop.signum = signal.SIGUSR1   # as the handler does: this iteration's reduce carries it
        result = real_step(run, pos, batches, stop)
        events.events.append(("queued", result.iteration))
        return result

    def save(run, pos, **kwargs):
        events.events.append(("saved", pos.iteration))
        return real_save(run, pos, **kwargs)

    monkeypatch.setattr(loop, "train_iteration", step)
    monkeypatch.setattr(loop, "save_checkpoint", save)


def _cfg(root: Path, work: Path, **changes):
    from atss_cli.config import TrainConfig

    return TrainConfig(coco=str(root), work_dir=str(work), **{**TINY, "scale": (64, 48), "flip_prob": 0.0,
                                                              "batch_per_gpu": 1, "accumulate": 1, **changes})


def test_each_iteration_is_read_once_the_next_is_queued_and_all_before_a_save(mixed, tmp_path, monkeypatch):
    from atss_cli.training.train import train

    events = Events()
    _watch_the_loop(monkeypatch, events)
    summary = train(_cfg(mixed, tmp_path / "w", epochs=1, save_every_iters=3), events)
    assert summary["iteration"] == 8
    q, lg, sv = "queued", "logged", "saved"
    assert events.events == [(q, 1), (q, 2), (lg, 1), (q, 3), (lg, 2), (lg, 3), (sv, 3),
                             (q, 4), (q, 5), (lg, 4), (q, 6), (lg, 5), (lg, 6), (sv, 6),
                             (q, 7), (q, 8), (lg, 7), (lg, 8), (sv, 8)]   # the epoch's end


def test_a_stop_flag_read_with_one_iteration_stops_after_the_next(mixed, tmp_path, monkeypatch):
    from atss_cli.training.train import TrainingInterrupted, train

    events = Events()
    _watch_the_loop(monkeypatch, events, stop_at=3)
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 4 "):
        train(_cfg(mixed, tmp_path / "w", epochs=1), events)
    q, lg, sv = "queued", "logged", "saved"
    assert events.events == [(q, 1), (q, 2), (lg, 1), (q, 3), (lg, 2), (q, 4), (lg, 3), (lg, 4), (sv, 4)]
    assert torch.load(tmp_path / "w" / "latest.pth", weights_only=False)["iteration"] == 4


def test_a_late_read_names_the_iteration_whose_loss_was_not_finite():
    from atss_cli.training.step import HostCopy, IterationResult, NonFiniteLoss, read_iteration

    def result(values, iteration=7, micro_steps=2):
        return IterationResult(iteration=iteration, lr=0.01, micro_steps=micro_steps, images=2, skipped=0,
                               values=HostCopy(torch.tensor(values, dtype=torch.float64)))

    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss at iteration 7 \(cls nan, bbox 0.5, centerness 1\); "
                                            r"stopped, latest.pth is the last good checkpoint"):
        read_iteration(result([float("nan"), 1.0, 2.0, 0.0]), "latest.pth")
    # Sums over micro-batches -> their mean; a flag from either micro-batch is a stop.
    values = read_iteration(result([1.0, 3.0, 5.0, 0.5]), "latest.pth")
    assert values.losses.tolist() == [0.5, 1.5, 2.5] and values.stop is True
