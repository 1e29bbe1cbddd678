"""What each torchrun process runs for `atss train --gpus N`: the same train() as one process.

Invoked as `python -m atss_cli.cli.train_worker --config FILE [--no-resume]`; errors print one
line (prefixed with the rank) and exit non-zero, like the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from atss_cli.cli.common import report_error

    parser = argparse.ArgumentParser(prog="atss-train-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        from atss_cli.config import load_json
        from atss_cli.engine.train import SilentReporter, train

        cfg = load_json(args.config)
        if rank == 0:
            from atss_cli.cli.reporting import ConsoleReporter

            reporter = ConsoleReporter(cfg.log_interval)
        else:
            reporter = SilentReporter()
        train(cfg, reporter, resume=not args.no_resume)
    except BaseException as exc:  # noqa: BLE001 - one line per failing rank, never a traceback
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, KeyboardInterrupt):
            return 130
        return report_error(exc, prefix=f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
