"""Installs the Python packages of `make install` / `make demo` into a virtual environment.

    python tools/install_deps.py --python .venv/bin/python PACKAGE [PACKAGE ...]

With uv (`pip install uv` into the environment first) when it can, else with pip. uv unpacks
the wheels on every core and byte-compiles them in parallel: torch and its CUDA libraries
(5.5 GB unpacked) take about 40 s with it and about 100 s with pip on a 2-core machine, which
is most of `make demo`'s set-up. Both give the same versions: uv is told what pip is configured
with (`pip config list`, which includes PIP_* variables: index-url, extra-index-url,
find-links, constraint, no-index) and to pick the best version across all indexes as pip does
(--index-strategy unsafe-best-match). Any failure of the uv path (no uv wheel reachable, an
index uv reads differently) falls back to pip, with one line saying so. ATSS_NO_UV=1 skips uv.

uv's cache goes inside the environment (<venv>/.uv-cache, unless UV_CACHE_DIR is set): it is
hard-linked into site-packages, so it costs no extra disk and goes away with the environment.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

# pip option -> uv option; the values may be lists separated by whitespace
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
             "find-links": "--find-links", "constraint": "--constraint"}


# pip applies [global], then [install], then PIP_* variables (shown as ":env:"), each over the
# last; `pip config list` prints them in an order that changed between pip versions.
SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def pip_config(python: str) -> dict[str, list[str]]:
    """pip's effective index settings for `pip install`, from `pip config list`."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return parse_pip_config(proc.stdout)


def parse_pip_config(text: str) -> dict[str, list[str]]:
    found: dict[str, tuple[int, list[str]]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        section, dot, option = key.strip().rpartition(".")
        if not sep or not dot or section not in SECTION_RANK:
            continue
        if option not in PIP_TO_UV and option != "no-index":
            continue
        try:   # pip prints repr(value): a multi-line setting comes out as '\\nA\\nB'
            value = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            value = value.strip().strip("'\"")
        rank = SECTION_RANK[section]
        if option not in found or rank >= found[option][0]:
            found[option] = (rank, value.split())
    return {option: values for option, (_, values) in found.items()}


def uv_args(config: dict[str, list[str]]) -> list[str]:
    args = ["--index-strategy", "unsafe-best-match"]
    if config.get("no-index", ["false"])[0].lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    for option, flag in PIP_TO_UV.items():
        for value in config.get(option, []):
            args += [flag, value]
    return args


def run(cmd: list[str], env: dict | None = None) -> int:
    return subprocess.run(cmd, env=env).returncode


def install_with_uv(python: str, packages: list[str]) -> bool:
    venv = Path(python).absolute().parent.parent   # not resolve(): bin/python links out of the venv
    uv = Path(python).parent / "uv"
    if not uv.exists() and run([python, "-m", "pip", "install", "-q", "uv"]) != 0:
        print("install_deps: no uv wheel reachable; installing with pip", file=sys.stderr)
        return False
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", str(venv / ".uv-cache"))
    cmd = [str(uv), "pip", "install", "--quiet", "--python", python, "--compile-bytecode",
           *uv_args(pip_config(python)), *packages]
    if run(cmd, env) != 0:
        print(f"install_deps: uv failed ({shlex.join(cmd[:4])} ...); installing with pip", file=sys.stderr)
        return False
    return True


def install_with_pip(python: str, packages: list[str]) -> None:
    if run([python, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel"]) != 0:
        sys.exit("install_deps: pip could not upgrade itself")
    if run([python, "-m", "pip", "install", "-q", *packages]) != 0:
        sys.exit("install_deps: pip install failed")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="the environment's python")
    ap.add_argument("packages", nargs="+")
    args = ap.parse_args(argv)
    # pip, setuptools and wheel: the extension is built with `pip install --no-build-isolation -e .`
    packages = ["pip", "setuptools", "wheel", *args.packages]
    if os.environ.get("ATSS_NO_UV") == "1" or not install_with_uv(args.python, packages):
        install_with_pip(args.python, args.packages)


if __name__ == "__main__":
    main()
