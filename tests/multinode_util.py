"""Shared by the multi-node, lost-rank and SLURM tests: the tiny training command, starting
`atss train` agents as nodes (optionally inside network namespaces), and reading losses back.

Every process a helper starts is killed (its whole process group) by `Nodes.close`, and every
namespace and veth pair by `NetnsPair.close`, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cli_run import ROOT, TINY, WORKER_MODULE, atss, atss_cmd, cli_env

# BatchNorm frozen so that one process with batch 2 and two with batch 1 compute the same loss.
TINY_FROZEN_BN = [*TINY, "--set", "norm_eval=true"]


def common(coco: Path, epochs: int = 1) -> list[str]:
    return ["--coco", str(coco), "--device", "cpu", "--epochs", str(epochs), "--accumulate", "1", "--lr", "0.01",
            "--eval-interval", "0", *TINY_FROZEN_BN]


# The suite's one runner (tests/cli_run.py), under the names these tests use.
env = cli_env
run = atss


def two_process_run(coco: Path, work: Path, epochs: int) -> Path:
    """The uninterrupted reference: one node, two gloo processes, batch 1 each; its work dir.
    (Made once per session: conftest's `two_process_reference`.)"""
    proc = run("train", *common(coco, epochs=epochs), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 2)
    assert proc.returncode == 0, proc.stderr
    return work


def losses(work: Path, epochs: int | None = None) -> list[tuple[int, float]]:
    """(iteration, loss) of every logged training iteration; `epochs`: those of the first `epochs`."""
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    if epochs is not None:
        last = epochs * json.loads((work / "config.json").read_text())["derived"]["iters_per_epoch"]
        records = [r for r in records if r["iteration"] <= last]
    return [(r["iteration"], r["loss"]) for r in records if r["kind"] == "train"]


def assert_same_losses(a: list, b: list) -> None:
    assert [i for i, _ in a] == [i for i, _ in b], (a, b)
    for (i, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-5, abs=1e-6), (i, la, lb)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_records(work: Path) -> int:
    path = work / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"kind": "train"' in line for line in path.read_text().splitlines())


class Nodes:
    """`atss train` agents started as nodes; each in its own process group, killed on close."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list, prefix: list[str] | None = None, extra_env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([*(prefix or []), *atss_cmd(*args)], cwd=ROOT, env=cli_env(extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float = 300) -> list[tuple[int, str, str]]:
        out = []
        for proc in self.procs:
            o, e = proc.communicate(timeout=timeout)
            out.append((proc.returncode, o, e))
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                # torchrun starts the workers in sessions of their own: kill them by name first.
                for pid in worker_pids(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=30)
            except Exception:  # noqa: BLE001 - best effort: the group is dead
                pass


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read() if p.stderr else ""
                pytest.fail(f"{what}: a process ended first (code {p.returncode}): {err}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def worker_pids(agent_pid: int) -> list[int]:
    """The training workers (children running the worker module) of an `atss train` agent."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != agent_pid:
                continue
            if WORKER_MODULE.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class NetnsPair:
    """Two network namespaces joined by a veth pair: 10.<n>.0.1 (node 0) and 10.<n>.0.2 (node 1)."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns = (f"atss{tag}a", f"atss{tag}b")
        self.dev = (f"av{tag}", f"bv{tag}")
        self.addr = ("10.231.7.1", "10.231.7.2")
        self.made: list[str] = []

    @staticmethod
    def unavailable() -> str:
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"atssprobe{uuid.uuid4().hex[:6]}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return ""

    def _ip(self, *args) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"

    def open(self) -> "NetnsPair":
        for ns in self.ns:
            self._ip("netns", "add", ns)
            self.made.append(ns)
        self._ip("link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
        for ns, dev, addr in zip(self.ns, self.dev, self.addr):
            self._ip("link", "set", dev, "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        return self

    def prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node]]

    def cut(self, node: int) -> None:
        """The node goes silent: its link down, no connection closed."""
        self._ip("-n", self.ns[node], "link", "set", self.dev[node], "down")

    def close(self) -> None:
        for ns in self.made:  # deleting a namespace deletes the veth end inside it, and its peer
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made = []
