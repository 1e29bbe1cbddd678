"""Multi-process runs through PyTorch's own launcher (torch.distributed.run, i.e. torchrun).

The parent `atss train --gpus N` (or `--nnodes`, or SLURM's srun, see slurm.py) resolves and
writes the run's request, then hands the worker module (worker.py) to torch.distributed.run,
which starts the processes; each joins the group (atss_cli.distributed.group.init_from_env).
"""

from __future__ import annotations

import os
import socket
import time

from atss_cli.distributed.group import DEFAULT_JOIN_TIMEOUT_S, ENV_JOIN_TIMEOUT, ENV_LAUNCH
from atss_cli.errors import AtssError, param


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
        raise AtssError(f"{param('master_port')} is required with {param('nnodes')} > 1 (the same on every node)")
    if node_rank >= nnodes:
        raise AtssError(f"{param('node_rank')} {node_rank} with {param('nnodes')} {nnodes}: node ranks are 0..{nnodes - 1}")
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
            raise AtssError(f"{param('master_port')} {port} is in use on this machine (another run?); "
                            "choose a free port, the same on every node") from None


def failure_summary(failures: dict, what: str, node_rank: int, max_restarts: int) -> str:
    """One line for the ranks of this node that failed, the cause first: killed by a signal or
    an error of their own, then those that lost contact with it, then those the launcher stopped."""
    import signal

    from atss_cli.distributed.heartbeat import EXIT_PEER_LOST

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
        return (f"{param('master_port')} {port} is in use on {master_addr} (another run?); "
                "choose a free port, the same on every node")
    if node_rank == 0:
        return (f"rendezvous at {master_addr}:{port}: not all {nnodes} node(s) arrived within {join} s "
                f"({param('join_timeout')}); check {param('nnodes')} and {param('master_port')} on every node ({type(exc).__name__})")
    return (f"rendezvous at {master_addr}:{port}: node 0 could not be reached or not all {nnodes} node(s) "
            f"arrived within {join} s ({param('join_timeout')}); check {param('master_addr')}/{param('master_port')}/{param('nnodes')} "
            f"({type(exc).__name__})")
