"""A lost process: the others stop within a bounded time with one line each and a summary that
names the lost rank; the same command resumes exactly; --max-restarts restarts by itself.

(A node that goes silent without closing its connections, its link cut, is in
test_multinode.py: it needs network namespaces.)
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from multinode_util import (Nodes, assert_same_losses, common, free_port, losses, train_records, wait_for,
                            worker_pids)


@pytest.fixture(scope="module")
def coco(small_coco):
    return small_coco


@pytest.fixture(scope="module")
def reference(two_process_reference):
    """Uninterrupted: one node, two gloo processes, 2 epochs (6 iterations); made once per session."""
    return losses(two_process_reference)


def node_args(coco, work, rank, port, *extra):
    return ["train", *common(coco, 2), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 1, "--nnodes", 2,
            "--node-rank", rank, "--master-port", port, "--dist-timeout", 10, "--set", "save_every_iters=1", *extra]


def test_a_killed_process_stops_the_other_node_and_the_same_command_resumes(coco, reference, tmp_path):
    work = tmp_path / "killed"
    port = free_port()
    nodes = Nodes()
    try:
        node1 = nodes.start(node_args(coco, work, 1, port))
        node0 = nodes.start(node_args(coco, work, 0, port))
        wait_for(lambda: train_records(work) >= 2 and worker_pids(node1.pid), 240, "two iterations", [node0, node1])
        os.kill(worker_pids(node1.pid)[0], signal.SIGKILL)
        killed = time.monotonic()
        _, err0 = node0.communicate(timeout=120)
        stopped = time.monotonic() - killed
        _, err1 = node1.communicate(timeout=120)
    finally:
        nodes.close()
    print(f"\nnode 0 (rank 0) exited {stopped:.1f} s after rank 1 was killed")
    assert node0.returncode != 0 and node1.returncode != 0
    assert "Traceback" not in err0 + err1
    e0 = [line for line in err0.splitlines() if line.startswith("error:")]
    e1 = [line for line in err1.splitlines() if line.startswith("error:")]
    assert len(e0) == 2 and e0[0].startswith("error: [rank 0] lost contact with another rank"), err0
    assert e0[1].startswith("error: training stopped: rank 0 lost contact") and "on node 0" in e0[1], err0
    assert e1 == [e1[0]] and "rank 1 was killed (SIGKILL) on node 1" in e1[0], err1

    for code, _, err in _both_nodes(coco, work):  # the same command on both nodes
        assert code == 0, err
    assert_same_losses(reference, losses(work))


def _both_nodes(coco, work, *extra):
    port = free_port()
    nodes = Nodes()
    try:
        nodes.start(node_args(coco, work, 1, port, *extra))
        nodes.start(node_args(coco, work, 0, port, *extra))
        return nodes.wait_all(timeout=300)
    finally:
        nodes.close()


def test_max_restarts_restarts_the_group_and_it_continues_from_latest(coco, reference, tmp_path):
    work = tmp_path / "restarted"
    nodes = Nodes()
    try:
        agent = nodes.start(["train", *common(coco, 2), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 2,
                             "--max-restarts", 1, "--dist-timeout", 10, "--set", "save_every_iters=1"])
        wait_for(lambda: train_records(work) >= 2 and len(worker_pids(agent.pid)) == 2, 240, "two iterations",
                 [agent])
        os.kill(max(worker_pids(agent.pid)), signal.SIGKILL)
        out, err = agent.communicate(timeout=300)
    finally:
        nodes.close()
    assert agent.returncode == 0, err
    assert "resumed from" in out, out
    assert_same_losses(reference, losses(work))


def test_max_restarts_across_nodes_uses_c10d_and_continues(coco, reference, tmp_path):
    work = tmp_path / "c10d"
    port = free_port()
    nodes = Nodes()
    try:
        node1 = nodes.start(node_args(coco, work, 1, port, "--max-restarts", 1))
        node0 = nodes.start(node_args(coco, work, 0, port, "--max-restarts", 1))
        wait_for(lambda: train_records(work) >= 2 and worker_pids(node1.pid), 240, "two iterations", [node0, node1])
        os.kill(worker_pids(node1.pid)[0], signal.SIGKILL)
        results = nodes.wait_all(timeout=300)
    finally:
        nodes.close()
    for code, out, err in results:
        assert code == 0, err
    assert_same_losses(reference, losses(work))
