"""Several nodes on one machine: two `atss train` agents as two nodes give the losses of one node.

The rendezvous is torchrun's static one: each node says its --node-rank, so ranks are fixed
(node i holds ranks i*nproc..), node 0 hosts the store at --master-addr:--master-port, and no
extra rendezvous round is needed. (c10d, which --max-restarts uses across nodes, is in
test_lost_rank.py.) Where `ip netns` works (root), the nodes live in two network namespaces
joined by a veth pair, so --master-addr and gloo's traffic cross an interface.
Also the bad input of a multi-node launch: each a one-line error within a bounded time.
"""

from __future__ import annotations

import socket
import time

import pytest

from cli_run import assert_one_line_error
from multinode_util import (TINY_FROZEN_BN, NetnsPair, Nodes, assert_same_losses, common, free_port, losses, run,
                            train_records, wait_for)


@pytest.fixture(scope="module")
def coco(small_coco):
    return small_coco


@pytest.fixture(scope="module")
def one_node(two_process_reference):
    """The reference: one node, two gloo processes, batch 1 each; 2 epochs (6 iterations); made
    once per session."""
    return losses(two_process_reference)


def two_nodes(coco, work, *, addr="127.0.0.1", netns: NetnsPair | None = None, epochs=2, extra=()):
    port = free_port()
    nodes = Nodes()
    try:
        for rank in (1, 0):
            nodes.start(["train", *common(coco, epochs), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 1,
                         "--nnodes", 2, "--node-rank", rank, "--master-addr", addr, "--master-port", port, *extra],
                        prefix=netns.prefix(rank) if netns else None)
        return nodes.wait_all(timeout=300)
    finally:
        nodes.close()


def test_two_nodes_on_loopback_give_the_losses_of_one_node(coco, one_node, tmp_path):
    work = tmp_path / "two"
    for code, out, err in two_nodes(coco, work):
        assert code == 0, err
        assert "Traceback" not in err
    assert_same_losses(one_node, losses(work))


@pytest.fixture
def netns():
    why = NetnsPair.unavailable()
    if why:
        pytest.skip(why)
    pair = NetnsPair()
    try:
        yield pair.open()
    finally:
        pair.close()


@pytest.mark.system
def test_two_nodes_in_two_network_namespaces_give_the_losses_of_one_node(coco, one_node, tmp_path, netns):
    work = tmp_path / "netns"
    for code, out, err in two_nodes(coco, work, addr=netns.addr[0], netns=netns):
        assert code == 0, err
    print("\niteration  one node (--nproc 2)  two nodes (netns, --nproc 1 each)")
    for (i, a), (_, b) in zip(one_node, losses(work)):
        print(f"{i:9d}  {a:.9f}  {b:.9f}")
    assert_same_losses(one_node, losses(work))


@pytest.mark.system
def test_a_node_gone_silent_stops_the_other_and_the_rerun_resumes(coco, one_node, tmp_path, netns):
    """Node 1's link goes down mid-run (no connection closed): node 0 stops after --dist-timeout
    with a line naming rank 1 on node 1; the same command on both nodes then resumes."""
    work = tmp_path / "cut"
    port = free_port()

    def args(rank):
        return ["train", *common(coco, 2), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 1, "--nnodes", 2,
                "--node-rank", rank, "--master-addr", netns.addr[0], "--master-port", port, "--dist-timeout", 5,
                "--set", "save_every_iters=1"]

    nodes = Nodes()
    try:
        node1 = nodes.start(args(1), prefix=netns.prefix(1))
        node0 = nodes.start(args(0), prefix=netns.prefix(0))
        wait_for(lambda: train_records(work) >= 2, 240, "two iterations", [node0, node1])
        netns.cut(1)
        cut = time.monotonic()
        _, err0 = node0.communicate(timeout=120)
        stopped = time.monotonic() - cut
        _, err1 = node1.communicate(timeout=120)
    finally:
        nodes.close()
    print(f"node 0 stopped {stopped:.1f} s after node 1's link went down (--dist-timeout 5)")
    assert node0.returncode != 0 and node1.returncode != 0
    errors0 = [line for line in err0.splitlines() if line.startswith("error:")]
    assert any("[rank 0] lost contact" in line and "rank 1 (node 1" in line for line in errors0), err0
    assert errors0[-1].startswith("error: training stopped") and "on node 0" in errors0[-1], err0
    assert "Traceback" not in err0 + err1
    assert any(line.startswith("error: [rank 1] lost contact") for line in err1.splitlines()), err1
    done = train_records(work)
    assert 2 <= done < 6

    netns.close()  # the same command again, on a fresh pair of namespaces
    again = NetnsPair().open()
    try:
        for code, out, err in two_nodes(coco, work, addr=again.addr[0], netns=again):
            assert code == 0, err
    finally:
        again.close()
    assert_same_losses(one_node, losses(work))


# --- bad input: one line each, within a bounded time -----------------------------------------

def test_an_unreachable_rendezvous_is_one_line_after_the_join_timeout(coco, tmp_path):
    port = free_port()  # nobody listens there
    proc = run("train", *common(coco), "--work-dir", tmp_path / "w", "--nproc", 1, "--nnodes", 2, "--node-rank", 1,
               "--master-port", port, "--join-timeout", 3, timeout=120)
    assert_one_line_error(proc, "rendezvous at 127.0.0.1", "within 3 s", "--join-timeout")


def test_a_port_in_use_is_one_line_at_once(coco, tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("train", *common(coco), "--work-dir", tmp_path / "w", "--nproc", 2, "--master-port", port,
                   timeout=120)
    assert_one_line_error(proc, f"--master-port {port} is in use")


def test_nodes_that_do_not_arrive_are_one_line_after_the_join_timeout(coco, tmp_path):
    # Node 0 expects two nodes; only it arrives.
    proc = run("train", *common(coco), "--work-dir", tmp_path / "w", "--nproc", 1, "--nnodes", 2, "--node-rank", 0,
               "--master-port", free_port(), "--join-timeout", 3, timeout=120)
    assert_one_line_error(proc, "not all 2 node(s) arrived within 3 s")


def test_a_node_rank_outside_the_node_count_is_one_line(coco, tmp_path):
    proc = run("train", *common(coco), "--work-dir", tmp_path / "w", "--nproc", 1, "--nnodes", 2, "--node-rank", 2,
               "--master-port", free_port(), timeout=120)
    assert_one_line_error(proc, "--node-rank 2 with --nnodes 2")


def test_a_world_size_the_batch_layout_cannot_use_is_one_line_per_rank(coco, tmp_path):
    # 7 usable images cannot make one global batch of 3 processes x 4 images when the epoch's
    # leftovers are dropped (drop_last; joined, the default, they make one short batch of 7).
    proc = run("train", *common(coco), "--work-dir", tmp_path / "w", "--nproc", 3, "--batch-per-gpu", 4,
               "--set", "drop_last=true", timeout=240)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    for rank in range(3):
        assert any(line.startswith(f"error: [rank {rank}]") and "fewer than one global batch of 12" in line
                   for line in errors), proc.stderr
    assert errors[-1].startswith("error: training stopped"), proc.stderr


def test_train_ann_without_val_ann_says_there_is_no_evaluation(coco, tmp_path):
    work = tmp_path / "w"
    proc = run("train", "--train-ann", coco / "annotations" / "instances_train2017.json", "--train-images",
               coco / "train2017", "--device", "cpu", "--epochs", 1, "--batch-per-gpu", 2, "--accumulate", 1,
               "--work-dir", work, "--set", "max_iters=1", "--lr", "0.01", *TINY_FROZEN_BN)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "--val-ann" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --train-ann without --val-ann"), proc.stderr


def test_nodes_that_disagree_on_the_node_count_are_one_line_each(coco, tmp_path):
    # torchrun alone lets a node told --nnodes 3 join a rendezvous of 2 and train.
    port = free_port()
    nodes = Nodes()
    try:
        for rank, count in ((1, 3), (0, 2)):
            nodes.start(["train", *common(coco), "--work-dir", tmp_path / "w", "--batch-per-gpu", 1, "--nproc", 1,
                         "--nnodes", count, "--node-rank", rank, "--master-port", port, "--join-timeout", 10])
        results = nodes.wait_all(timeout=240)
    finally:
        nodes.close()
    for (code, _, err), rank in zip(results, (1, 0)):
        assert code == 2, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors[0] == (f"error: [rank {rank}] the nodes disagree on the node count "
                             "(node 0 --nnodes 2, node 1 --nnodes 3); give every node the same --nnodes"), err
        assert errors[1].startswith("error: training stopped") and errors[1].endswith("see the error above"), err
