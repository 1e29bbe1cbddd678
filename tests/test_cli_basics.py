"""The command surface: help is fast and torch-free, usage errors are one line."""

import subprocess
import sys

import pytest

from cli_run import ROOT, atss

COMMANDS = ["env", "prepare", "train", "eval", "predict", "export", "demo", "bench assigner", "bench model"]


def run(*args):
    return atss(*args, timeout=120)


def test_help_imports_neither_torch_nor_the_extension():
    code = ("import sys\nfrom atss_cli.cli.main import app, main\n"
            "rc = main(['--help'])\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('atss_cli._C')]\n"
            "assert rc == 0 and not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(c.split()[0] in proc.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    proc = run(*command.split(), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_unknown_command_and_flag_are_one_line_errors():
    for args in (["frobnicate"], ["eval", "--frobnicate"], ["bench", "nothing"]):
        proc = run(*args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


def test_error_line_is_one_write(monkeypatch):
    # ranks share one stderr: the line and its newline must not be two writes that can interleave
    from atss_cli.cli.common import report_error
    from atss_cli.errors import AtssError

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert report_error(AtssError("disk full"), prefix="[rank 1] ") == AtssError("x").exit_code
    report_error(ValueError("odd\nsecond line"))
    assert writes == ["error: [rank 1] disk full\n",
                      "error: internal error: ValueError: odd (this is a bug; ATSS_DEBUG=1 shows the traceback)\n"]
