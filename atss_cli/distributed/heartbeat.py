"""Liveness between the processes of a multi-process run, independent of the collectives.

A process that is killed closes its sockets and its peers' next collective fails at once; a
node that loses power or its network does not, and its peers would wait in a collective until
the backend's timeout. Each rank therefore bumps a counter in the rendezvous store every
second (its own TCP connection, a background thread) and watches the others' counters: a peer
whose counter has not moved for `timeout` seconds (or a store that cannot be reached for that
long) stops this process with one line naming the rank, node and host that went silent.

Counters, not timestamps: the nodes' clocks need not agree. A rank that finishes cleanly marks
itself done, so the last ranks still writing files are not taken for lost.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import timedelta

# Exit status of a process that stopped because a peer was lost (the launcher names it so).
EXIT_PEER_LOST = 3
INTERVAL_S = 1.0

_beat: "_Heartbeat | None" = None


def start(rank: int, world_size: int, timeout_s: float) -> None:
    """Start beating and watching (after init_process_group: the store is up by then)."""
    global _beat
    if _beat is not None or world_size <= 1:
        return
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return
    _beat = _Heartbeat(addr, int(port), rank, world_size, timeout_s)
    _beat.start()


def stop(finished: bool) -> None:
    """Stop the thread; `finished`: this rank completed, so its silence from now on is no loss."""
    global _beat, _silent_at_stop
    if _beat is not None:
        _silent_at_stop = _beat.silent_peers(min_s=SILENT_WORTH_NAMING_S)  # for the error line after
        _beat.stop(finished)
        _beat = None


_silent_at_stop = ""
SILENT_WORTH_NAMING_S = 2 * INTERVAL_S + 1


def silent_peers() -> str:
    """The peers that have been silent longest, as words for an error line ('' when none is);
    after `stop`, those it saw silent then (train() stops the heartbeat before its caller reports)."""
    return _beat.silent_peers(min_s=SILENT_WORTH_NAMING_S) if _beat is not None else _silent_at_stop


def node_words(rank: int, info: dict | None) -> str:
    if not info:
        return f"rank {rank}"
    return f"rank {rank} (node {info.get('node')}, host {info.get('host')})"


class _Heartbeat(threading.Thread):
    def __init__(self, addr: str, port: int, rank: int, world: int, timeout_s: float):
        super().__init__(name="atss-heartbeat", daemon=True)
        self.addr, self.port, self.rank, self.world, self.timeout_s = addr, port, rank, world, timeout_s
        # A restarted group (--max-restarts) must not read the previous attempt's counters.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        run = os.environ.get("TORCHELASTIC_RUN_ID", os.environ.get("SLURM_JOB_ID", "run"))
        self.prefix = f"atss/hb/{run}/{attempt}"
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.last_seen: dict[int, tuple[int, float]] = {}  # peer -> (counter, local time it changed)
        self.peers_info: dict[int, dict] = {}
        self.store = None
        self.started = self.store_ok = time.monotonic()

    def _connect(self):
        import torch.distributed as dist

        # A plain probe first: a TCPStore that cannot connect retries and logs C++ stack traces.
        with socket.create_connection((self.addr, self.port), timeout=2):
            pass
        io = max(2.0, min(10.0, self.timeout_s / 3))
        return dist.TCPStore(self.addr, self.port, is_master=False, timeout=timedelta(seconds=io),
                             wait_for_workers=False)

    def run(self) -> None:
        """Store I/O here (it may block for seconds on a dead link); the verdict in `_judge`."""
        self.started = self.store_ok = time.monotonic()
        threading.Thread(target=self._judge, name="atss-heartbeat-judge", daemon=True).start()
        me = {"node": os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "?")),
              "host": socket.gethostname()}
        keys = [f"{self.prefix}/beat/{r}" for r in range(self.world)]
        count = 0
        while not self._halt.wait(INTERVAL_S if count else 0):
            try:
                if self.store is None:
                    self.store = self._connect()
                    self.store.set(f"{self.prefix}/info/{self.rank}", json.dumps(me))
                count += 1
                self.store.set(keys[self.rank], str(count))
                if self.store.check(keys):  # three requests a second per rank, whatever the world size
                    values = dict(enumerate(int(v) for v in self.store.multi_get(keys)))
                else:  # some have not arrived yet
                    values = {r: int(self.store.get(k)) for r, k in enumerate(keys) if self.store.check([k])}
                for r in values:  # who is where, for the error line (read once)
                    info = f"{self.prefix}/info/{r}"
                    if r not in self.peers_info and self.store.check([info]):
                        self.peers_info[r] = json.loads(self.store.get(info))
            except Exception:  # noqa: BLE001 - an unreachable store is judged by _judge
                self.store = None
                continue
            now = time.monotonic()
            with self._lock:
                self.store_ok = now
                for r, value in values.items():
                    seen = self.last_seen.get(r)
                    if r != self.rank and (seen is None or seen[0] != value):
                        self.last_seen[r] = (value, now)

    def _judge(self) -> None:
        while not self._halt.wait(INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                store_silent = now - self.store_ok
                for r in range(self.world):
                    if r != self.rank and r not in self.last_seen:
                        self.last_seen[r] = (0, self.started)  # not arrived yet: silent since our start
            if self._halt.is_set():
                return
            if store_silent > self.timeout_s:
                self._lost(f"the rendezvous store at {self.addr}:{self.port} (node 0) "
                           f"has not answered for {store_silent:.0f} s")
            worst = self._worst(now)
            if worst is not None and worst[1] > self.timeout_s:
                self._lost(f"{self._describe(worst[0])} has been silent for {worst[1]:.0f} s")

    def _worst(self, now: float):
        with self._lock:
            silent = [(r, now - t) for r, (v, t) in self.last_seen.items() if v != -1]
        return max(silent, key=lambda x: x[1]) if silent else None

    def _describe(self, rank: int) -> str:
        return node_words(rank, self.peers_info.get(rank))

    def silent_peers(self, min_s: float) -> str:
        now = time.monotonic()
        with self._lock:
            silent = sorted(((now - t, r) for r, (v, t) in self.last_seen.items() if v != -1), reverse=True)
        names = [self._describe(r) + f" silent {s:.0f} s" for s, r in silent if s >= min_s]
        return ", ".join(names[:4])

    def _lost(self, what: str) -> None:
        print(f"error: [rank {self.rank}] lost contact: {what}; stopping (timeout {self.timeout_s:g} s, "
              "--dist-timeout); rerun the same command to resume from latest.pth", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)

    def stop(self, finished: bool) -> None:
        self._halt.set()
        self.join(timeout=15)  # its last beat must not land after our "finished" mark
        if finished:
            try:
                store = self._connect()
                store.set(f"{self.prefix}/beat/{self.rank}", "-1")
            except Exception:  # noqa: BLE001 - the others are finishing too
                pass
