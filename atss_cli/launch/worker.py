"""What each process started by torchrun runs: one rank of a training run or of an evaluation.

    python -m atss_cli.launch.worker --config FILE [--no-resume]    the same train() as one process
    python -m atss_cli.launch.worker --eval FILE                    one rank of `atss eval`

FILE is the request the launching process wrote (training.py, evaluation.py); nothing is
handed over on the command line. Errors print one line (prefixed with the rank) and exit
non-zero, like the CLI; rank 0 reports.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atss-worker")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config")
    what.add_argument("--eval")
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    if args.eval:
        return evaluate_rank(args.eval)

    def load():
        from atss_cli.config import load_json

        return load_json(args.config)

    return run_rank(load, resume=not args.no_resume)[0]


def run_rank(load_config, *, resume: bool) -> tuple[int, dict]:
    """Train as the process RANK of WORLD_SIZE (from the environment): rank 0 reports, every
    rank that fails prints one line; returns the exit status and train()'s summary ({} on failure)."""
    from atss_cli.terminal import report_error

    rank = int(os.environ.get("RANK", "0"))
    try:
        from atss_cli.training.train import SilentReporter, train

        cfg = load_config()
        if rank == 0:
            from atss_cli.terminal import ConsoleReporter

            reporter = ConsoleReporter(cfg.log_interval)
        else:
            reporter = SilentReporter()
        summary = train(cfg, reporter, resume=resume)
    except BaseException as exc:  # noqa: BLE001 - one line per failing rank, never a traceback
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, KeyboardInterrupt):
            return 130, {}
        lost = peer_lost_line(exc, rank)
        if lost:
            print(lost, file=sys.stderr, flush=True)
            from atss_cli.distributed.heartbeat import EXIT_PEER_LOST

            return EXIT_PEER_LOST, {}
        return report_error(exc, prefix=f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""), {}
    return 0, summary or {}


def evaluate_rank(request_file: str) -> int:
    """Evaluate as the process RANK of WORLD_SIZE; rank 0 shows the progress and the table."""
    from atss_cli import terminal

    rank = int(os.environ.get("RANK", "0"))
    try:
        from atss_cli.launch.evaluation import EvalRequest, analyze_evaluation, evaluate_as_rank

        request = EvalRequest.from_json(request_file)
        con = terminal.console()
        progress, stop = terminal.progress_bar(con) if rank == 0 else (None, lambda: None)
        try:
            metrics = evaluate_as_rank(request, progress=progress)
        finally:
            stop()
        if rank == 0:
            terminal.print_metrics(con, metrics, title=request.title)
            if request.json_out is not None:
                print(f"metrics: {request.json_out}")
            terminal.print_analysis(analyze_evaluation(request, metrics), request.analyze)
    except BaseException as exc:  # noqa: BLE001 - one line per failing rank, never a traceback
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, KeyboardInterrupt):
            return 130
        return terminal.report_error(exc)  # as `atss eval` itself says it, in every rank
    return 0


# What gloo, NCCL and the store say when a peer process or node is gone.
_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "timed out", "timeout",
               "broken pipe", "socket closed", "connection refused", "nccl communicator was aborted",
               "remote process exited", "no route to host", "watchdog caught collective operation")


def peer_lost_line(exc: BaseException, rank: int) -> str:
    """One line when `exc` is a collective that failed because another rank died or went silent."""
    import torch.distributed as dist

    from atss_cli.distributed import heartbeat
    from atss_cli.distributed.group import dist_timeout

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ""
    text = " ".join(str(exc).split())
    dist_error = isinstance(exc, getattr(dist, "DistError", ()))
    if not dist_error and not (isinstance(exc, RuntimeError) and any(s in text.lower() for s in _PEER_SIGNS)):
        return ""
    # The backend's message says what broke; the heartbeat says who has gone quiet.
    detail = text.split("] ", 1)[-1] if "] " in text[:200] else text
    detail = detail.split(". ", 1)[0][:160]
    silent = heartbeat.silent_peers()
    if silent:
        who = f"silent: {silent}"
    elif "timeout" in text.lower() or "timed out" in text.lower():
        who = "no answer in time"
    else:
        who = "a peer closed its connection"
    return (f"error: [rank {rank}] lost contact with another rank ({who}; {type(exc).__name__}: {detail}); "
            f"stopping (--dist-timeout {dist_timeout():g} s); rerun the same command to resume from latest.pth")


def leave(code: int) -> None:
    """Exit with `code`; after a failure without the interpreter's teardown: the C++ threads of a
    process group whose peer is gone can abort the process there (SIGABRT after our line)."""
    if code == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
