"""The `atss` command: registers each command module and turns errors into one line.

Command modules import torch only inside their functions, so `atss --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from atss_cli.cli import common

app = typer.Typer(
    name="atss",
    help="Train, evaluate and benchmark the ATSS object detector on COCO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
bench_app = typer.Typer(help="Benchmarks that print median, spread, device and versions.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(bench_app, name="bench")


def _register() -> None:
    # Each module adds its own commands; a module that is not written yet is simply absent.
    import importlib

    for name in ("env", "prepare", "train", "evaluate", "predict", "export", "demo", "bench_assigner", "bench_model",
                 "bench_train", "bench_data"):
        try:
            module = importlib.import_module(f"atss_cli.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"atss_cli.cli.{name}":
                continue
            raise
        module.register(app, bench_app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: usage errors and known errors print one line and exit non-zero."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="atss", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `atss train` with nothing else: the command's help, like `atss` alone.
            print(exc.format_message().rstrip(), file=sys.stderr)
            return 2
        # Wrong flag, missing argument, bad value: one line that names it.
        message = " ".join(exc.format_message().split())
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        return common.report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
