"""Shared by the whole suite: the `atss` runner, the tiny model's flags, the small COCO folder,
the runs several test files compare against (made once per session), and the `system` gate.

Session fixtures hand out folders that many tests read: a test never writes into them (it
trains into its own tmp_path).

`@pytest.mark.system` marks a test that installs system packages (apt-get) or makes network
namespaces. Those run only where asked: CI=true (CI sets it) or ATSS_SYSTEM_TESTS=1 (.ci/run
exports it); anywhere else they are skipped with that reason, so a plain `pytest` on a laptop
never runs `apt-get install`.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path

import pytest

import cli_run
from locks import exclusive, xdist_worker

SYSTEM_REASON = ("system test (installs system packages or makes network namespaces): "
                 "run with ATSS_SYSTEM_TESTS=1 or CI=true, as .ci/run does")


def system_tests_enabled() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("ATSS_SYSTEM_TESTS") == "1"


def pytest_configure(config):
    # Under pytest-xdist the workers share the cores: torch's intra-op pool in each would
    # oversubscribe them, and OpenMP threads spinning for a busy core made one in-process
    # training test 7x slower (215 s instead of 30). One thread a worker; a test that needs
    # another count sets it itself (test_trajectory_mmdet). The CLI children run on one already.
    if xdist_worker() is not None:
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if system_tests_enabled():
        return
    skip = pytest.mark.skip(reason=SYSTEM_REASON)
    for item in items:
        if item.get_closest_marker("system") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module", autouse=True)
def _garbage_collected_after_each_file():
    """Garbage a test file leaves in reference cycles is collected before the next file runs in
    this worker. An onnxruntime session in such a cycle survived into DataLoader workers that a
    later file forked, and the worker's own collection of it hung for good: the session's thread
    pool destructor waits on threads that fork does not copy."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def atss():
    """The CLI runner: `atss("train", ...)` is `python -m atss_cli train ...` (tests/cli_run.py)."""
    return cli_run.atss


@pytest.fixture(scope="session")
def tiny_flags() -> list:
    """The tiny model's `atss train` flags, from scratch (cli_run.TINY)."""
    return list(cli_run.TINY)


def made_once(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)`'s folder, made once per session: under pytest-xdist, once for all workers
    (the first to ask makes it under the run's shared temp folder, holding a lock; the others
    wait and reuse it), so a two-process reference run is not paid once per worker."""
    if xdist_worker() is None:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above each worker's popen-gwK/
    done = shared / f"{name}.done"
    with exclusive(f"{shared.name}-{name}"):
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed here left
            folder.mkdir()
            done.write_text(str(make(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def small_coco(tmp_path_factory) -> Path:
    """`atss prepare --synthetic`: 8 train and 4 val images at 128 px, seed 3 (read-only)."""
    def make(root: Path) -> Path:
        proc = cli_run.atss("prepare", "--synthetic", root, *cli_run.SMALL_COCO)
        assert proc.returncode == 0, proc.stderr
        return root

    return made_once(tmp_path_factory, "small_coco", make)


@pytest.fixture(scope="session")
def two_process_reference(small_coco, tmp_path_factory) -> Path:
    """The uninterrupted multi-process run the preemption-free comparisons use: one node, two
    gloo processes x batch 1, 2 epochs of the small COCO folder (6 iterations), BatchNorm frozen;
    its work dir (read-only). test_lost_rank, test_multinode, test_slurm and test_train_cli
    compare against it (the one-epoch comparisons against its first epoch: the lr steps are at
    epochs 8 and 11, so epoch 1 of a 2-epoch run is a 1-epoch run)."""
    from multinode_util import two_process_run

    return made_once(tmp_path_factory, "two_process_reference",
                     lambda work: two_process_run(small_coco, work, epochs=2))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(coco root, checkpoint path): 6 synthetic val images at 128 px and a random tiny model
    (ResNet-18, 32-wide FPN, 64-wide head) whose classifier bias is 0, so that it gives boxes."""
    import torch

    from atss_cli.data import generate_synthetic
    from atss_cli.model import build_atss

    # head_channels 64: GroupNorm(32) needs 2+ values per group on the 1x1 P7 map of a 128 px image.
    config = {"depth": 18, "fpn_channels": 32, "head_channels": 64, "stacked_convs": 1, "scale": [128, 128]}
    root = tmp_path_factory.mktemp("tiny_eval")
    generate_synthetic(root / "coco", train_images=0, val_images=6, seed=5, size=128)
    cats = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())["categories"]
    torch.manual_seed(0)
    model = build_atss(num_classes=len(cats), **{k: v for k, v in config.items() if k != "scale"})
    state = model.state_dict()
    state["bbox_head.atss_cls.bias"].zero_()  # scores near 0.5 instead of the 0.01 prior: boxes come out
    ckpt = root / "tiny.pth"
    torch.save({"state_dict": state, "config": config}, ckpt)
    return root / "coco", ckpt
