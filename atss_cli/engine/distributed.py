"""Multi-process training through PyTorch's own launcher (torch.distributed.run, i.e. torchrun).

The parent `atss train --gpus N` (or `--nnodes`, or SLURM's srun, see engine/slurm.py) resolves
and writes the config, then hands the worker module to torch.distributed.run, which starts the
processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; each worker calls
`init_from_env`, which joins the group with a bounded timeout (ATSS_DIST_TIMEOUT, --dist-timeout)
and starts the heartbeat (engine/heartbeat.py) that stops it when a peer goes silent.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from atss_cli.errors import AtssError


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
    from atss_cli.engine import heartbeat

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
        per_node = ", ".join(f"node {r} --nnodes {'/'.join(map(str, sorted(n)))}" for r, n in sorted(said.items()))
        raise AtssError(f"the nodes disagree on the node count ({per_node}); give every node the same --nnodes")
    if len(said) != counts[0]:
        raise AtssError(f"--nnodes {counts[0]} but the nodes that arrived say --node-rank "
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
                            "give --master-port") from None
        raise AtssError(f"no rendezvous at {addr}:{port} within {join:g} s (rank 0 did not come up; "
                        f"--join-timeout): {type(exc).__name__}") from None
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
    from atss_cli.engine import heartbeat

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, module_args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 0, max_restarts: int = 0,
           join_timeout: float = DEFAULT_JOIN_TIMEOUT_S, what: str = "training",
           work_dir: str | None = None) -> None:
    """Run `python -m module module_args` in nproc processes per node via torch.distributed.run.

    The rendezvous is torchrun's static one (node i holds ranks i*nproc.., node 0 hosts the store
    at master_addr:master_port), except with max_restarts > 0: a restart across nodes needs every
    node's agent to re-join, which only the c10d rendezvous does (the workers' keys get a prefix
    per restart, see _group_store). A failing worker prints its own one-line error; this raises
    one AtssError that names the rank(s) and how they ended.
    When every rank stopped on an interrupt and said so itself, or the launcher was stopped by a
    signal, this raises SystemExit with the status (130; 0 for a run SLURM requeues), no more words.
    """
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun's elastic agent logs warnings and a failure report on stderr; the workers' own
    # one-line errors and ours say what the user needs.
    # Each of its loggers sets its own level, so each is quieted by name.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    if nnodes > 1 and master_port == 0:
        raise AtssError("--master-port is required with --nnodes > 1 (the same on every node)")
    if node_rank >= nnodes:
        raise AtssError(f"--node-rank {node_rank} with --nnodes {nnodes}: node ranks are 0..{nnodes - 1}")
    port = master_port or free_port()
    if node_rank == 0:
        _check_port_free(port, master_addr)
    join = max(1, int(round(join_timeout)))
    if max_restarts > 0:
        rdzv = [f"--nnodes={nnodes}:{nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master_addr}:{port}",
                f"--rdzv-id=atss-{port}",
                f"--rdzv-conf=join_timeout={join},read_timeout={join},is_host={int(node_rank == 0)}"]
        if node_rank == 0:
            rdzv.append(f"--local-addr={master_addr}")  # what the workers are told: reachable by all
    else:
        rdzv = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                f"--master-port={port}", f"--rdzv-conf=timeout={join}"]
    argv = [f"--nproc-per-node={nproc}", *rdzv, f"--max-restarts={max_restarts}", "-m", module, *module_args]
    os.environ[ENV_JOIN_TIMEOUT] = str(join)
    os.environ[ENV_LAUNCH] = f"{nnodes},{node_rank}"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(nproc, 1))))
    # torchrun starts the workers in their own sessions: a USR1 (SLURM's warning before the time
    # limit, forwarded by the sbatch script or srun) reaches only us. Pass it on; SIGTERM the
    # elastic agent passes on itself (then gives them 30 s).
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: _signal_workers(module, signum))
    started = time.time()
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        if 130 in codes and all(c in (130, -signal.SIGTERM, -signal.SIGKILL) for c in codes):
            raise SystemExit(130) from None  # interrupted ranks saved and said so; a summary would repeat it
        raise AtssError(failure_summary(exc.failures, what, node_rank, max_restarts)) from None
    except SignalException as exc:
        raise SystemExit(_stopped_by_signal(exc.sigval, work_dir, started)) from None
    except Exception as exc:  # noqa: BLE001 - the rendezvous's own errors, as one line
        raise AtssError(rendezvous_error(exc, master_addr, port, nnodes, node_rank, join)) from None
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _signal_workers(module: str, signum: int) -> None:
    """Send `signum` to our worker processes (children running `module`)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if module.encode() not in f.read():
                    continue
            os.kill(int(entry), signum)
        except (OSError, ValueError, IndexError):
            continue


def _stopped_by_signal(sigval, work_dir: str | None, started: float) -> int:
    """The agent got SIGTERM/SIGINT and stopped the workers (they save first): say what is left.

    Under SLURM a fresh latest.pth means the ranks saved and asked for a requeue: exit 0 then."""
    import signal
    import sys

    name = signal.Signals(sigval).name if isinstance(sigval, int) else str(sigval)
    latest = os.path.join(work_dir, "latest.pth") if work_dir else None
    saved = latest is not None and os.path.exists(latest) and os.path.getmtime(latest) >= started
    where = f"{latest} saved" if saved else "no new checkpoint"
    print(f"stopped by {name}: {where}; run the same command to resume", file=sys.stderr, flush=True)
    return 0 if saved and os.environ.get("SLURM_JOB_ID") else 130


def _check_port_free(port: int, master_addr: str) -> None:
    """Node 0 hosts the store on `port`: a port in use is one line now, not a rendezvous timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            raise AtssError(f"--master-port {port} is in use on this machine (another run?); "
                            "choose a free port, the same on every node") from None


def failure_summary(failures: dict, what: str, node_rank: int, max_restarts: int) -> str:
    """One line for the ranks of this node that failed, the cause first: killed by a signal or
    an error of their own, then those that lost contact with it, then those the launcher stopped."""
    import signal

    from atss_cli.engine.heartbeat import EXIT_PEER_LOST

    killed, errors, lost, stopped = [], [], [], []
    for rank in sorted(failures):
        code = failures[rank].exitcode
        if code == -signal.SIGTERM:
            stopped.append(rank)  # the agent's SIGTERM to the rest of a failed group
        elif code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            killed.append(f"rank {rank} was killed ({name})")
        elif code == EXIT_PEER_LOST:
            lost.append(rank)
        else:
            errors.append(f"rank {rank} exited with code {code}")
    parts = killed + errors
    if lost:
        parts.append(f"{_ranks(lost)} lost contact with another rank (named above)")
    if stopped and parts:
        parts.append(f"{_ranks(stopped)} stopped with {'it' if len(parts) == 1 else 'them'}")
    elif stopped:
        parts.append(f"{_ranks(stopped)} terminated (SIGTERM)")
    after = f" after {max_restarts} restart(s)" if max_restarts else ""
    advice = ("see the error above" if errors and not (killed or lost) else
              "rerun the same command to resume from latest.pth")
    return (f"{what} stopped{after}: {'; '.join(parts) or 'a process failed'} on node {node_rank} "
            f"({socket.gethostname()}); {advice}")


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def rendezvous_error(exc: BaseException, master_addr: str, port: int, nnodes: int, node_rank: int,
                     join: int) -> str:
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if "address already in use" in lowered or "errno: 98" in lowered:
        return (f"--master-port {port} is in use on {master_addr} (another run?); "
                "choose a free port, the same on every node")
    if node_rank == 0:
        return (f"rendezvous at {master_addr}:{port}: not all {nnodes} node(s) arrived within {join} s "
                f"(--join-timeout); check --nnodes and --master-port on every node ({type(exc).__name__})")
    return (f"rendezvous at {master_addr}:{port}: node 0 could not be reached or not all {nnodes} node(s) "
            f"arrived within {join} s (--join-timeout); check --master-addr/--master-port/--nnodes "
            f"({type(exc).__name__})")
