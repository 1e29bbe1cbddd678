"""The process group of a multi-process run, as each process sees it.

The launcher (atss_cli/launch/torchrun.py, or SLURM's srun) sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; each process calls `init_from_env`, which joins the group with a
bounded timeout (ATSS_DIST_TIMEOUT, the `dist_timeout` of a run) and starts the heartbeat
(heartbeat.py) that stops it when a peer goes silent.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from atss_cli.errors import AtssError, param


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# How long a rank waits on a silent peer (collectives and heartbeat) before it stops: the
# backends' own defaults (10 min NCCL, 30 min gloo) leave a lost node's peers hanging that long.
ENV_TIMEOUT = "ATSS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120
COLLECTIVE_MARGIN_S = 10
# How long a node waits for the others to arrive at the rendezvous (they may start minutes
# apart on a busy cluster, never hours).
ENV_JOIN_TIMEOUT = "ATSS_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT_S = 300
# What each node's launcher was told ("nnodes,node_rank"), compared once the group is up: torchrun
# lets a node that says --nnodes 3 join a rendezvous of 2 and train as if nothing were wrong.
ENV_LAUNCH = "ATSS_LAUNCH"
# A barrier waits for rank 0's one-off work (building a dataset's annotation cache can take
# minutes), which --dist-timeout, sized for one iteration's collectives, must not cut short: it
# waits in the store, and a peer that dies meanwhile is caught by the heartbeat instead.
BARRIER_WAIT_S = 6 * 3600

_store = None  # this process's group store (init_from_env), for barriers
_barriers = 0


def dist_timeout() -> float:
    return float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (a no-op for one process)."""
    from atss_cli.distributed import heartbeat

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        iface = interface_towards(os.environ.get("MASTER_ADDR", "127.0.0.1"))
        if iface:
            os.environ["GLOO_SOCKET_IFNAME"] = iface
    global _store
    timeout = dist_timeout()
    if not dist.is_initialized():
        _store = _group_store(rank, world)
        # Collectives give up a little after the heartbeat, which names the silent peer.
        dist.init_process_group(backend=backend, store=_store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout + COLLECTIVE_MARGIN_S))
    heartbeat.start(rank, world, timeout)
    if os.environ.get(ENV_LAUNCH):
        views: list = [None] * world
        dist.all_gather_object(views, os.environ[ENV_LAUNCH])
        check_layout(views)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def check_layout(views: list[str]) -> None:
    """One AtssError (the same on every rank) when the nodes' launch flags disagree."""
    said = {}
    for view in views:
        nnodes, node_rank = (int(x) for x in view.split(","))
        said.setdefault(node_rank, set()).add(nnodes)
    counts = sorted(set().union(*said.values()))
    if len(counts) > 1:
        per_node = ", ".join(f"node {r} {param('nnodes')} {'/'.join(map(str, sorted(n)))}" for r, n in sorted(said.items()))
        raise AtssError(f"the nodes disagree on the node count ({per_node}); give every node the same {param('nnodes')}")
    if len(said) != counts[0]:
        raise AtssError(f"{param('nnodes')} {counts[0]} but the nodes that arrived say {param('node_rank')} "
                        f"{', '.join(map(str, sorted(said)))}; give each node its own rank 0..{counts[0] - 1}")


def _group_store(rank: int, world: int):
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, under a prefix of its own per restart.

    torchrun's agent keeps one store across the restarts of --max-restarts: without a prefix a
    restarted rank can read the dead group's gloo addresses and fail to connect. Under torchrun
    the agent hosts the store; under srun one task per process, rank 0 does.
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    join = float(os.environ.get(ENV_JOIN_TIMEOUT, DEFAULT_JOIN_TIMEOUT_S))
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    host = rank == 0 and not agent
    try:
        store = dist.TCPStore(addr, port, world_size=world, is_master=host, timeout=timedelta(seconds=join),
                              wait_for_workers=False, multi_tenant=True)
    except Exception as exc:  # noqa: BLE001 - the store's own errors, as one line
        if "address already in use" in str(exc).lower():
            raise AtssError(f"port {port} on {socket.gethostname()} is in use (another job on this node?); "
                            f"give {param('master_port')}") from None
        raise AtssError(f"no rendezvous at {addr}:{port} within {join:g} s (rank 0 did not come up; "
                        f"{param('join_timeout')}): {type(exc).__name__}") from None
    return dist.PrefixStore(f"atss/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def interface_towards(addr: str) -> str | None:
    """The network interface this host reaches `addr` through, when it is not the loopback.

    gloo binds to the address the host name resolves to, which on many machines (Debian's
    127.0.1.1, a container's /etc/hosts) is a loopback the other nodes cannot reach.
    """
    import fcntl
    import struct

    try:
        ip = socket.gethostbyname(addr)
        if ip.startswith("127."):
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))  # UDP: picks the route, sends nothing
            local = s.getsockname()[0]
            if local.startswith("127."):
                return None
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                except OSError:
                    continue
                if socket.inet_ntoa(packed[20:24]) == local:
                    return name
    except OSError:
        return None
    return None


def shutdown() -> None:
    from atss_cli.distributed import heartbeat

    global _store, _barriers
    heartbeat.stop(finished=True)
    _store, _barriers = None, 0
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    global _barriers
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    if _store is None:
        dist.barrier()
        return
    _barriers += 1
    key = f"barrier/{_barriers}"
    if _store.add(key, 1) == dist.get_world_size():
        _store.set(f"{key}/open", "1")
    _store.wait([f"{key}/open"], timedelta(seconds=BARRIER_WAIT_S))
