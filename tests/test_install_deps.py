"""tools/install_deps.py: what uv is told is what pip is configured with."""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_deps", ROOT / "tools" / "install_deps.py")
install_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_deps)


def _pip_env(monkeypatch, tmp_path, config_text, **env):
    """pip sees only this config file and these PIP_* variables."""
    cfg = tmp_path / "pip.conf"
    cfg.write_text(config_text)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(cfg))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_real_pip_config_file_and_environment(tmp_path, monkeypatch):
    _pip_env(monkeypatch, tmp_path, "[global]\nindex-url = https://mirror.example/simple\n"
                                     "extra-index-url =\n    file:///a/simple\n    file:///b/simple\n",
             PIP_FIND_LINKS="/wheels /more-wheels", PIP_CONSTRAINT="/c.txt")
    config = install_deps.pip_config(sys.executable)
    assert config["index-url"] == ["https://mirror.example/simple"]
    assert config["extra-index-url"] == ["file:///a/simple", "file:///b/simple"]
    assert config["find-links"] == ["/wheels", "/more-wheels"]
    assert config["constraint"] == ["/c.txt"]
    args = install_deps.uv_args(config)
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]
    pairs = list(zip(args[2::2], args[3::2]))
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///a/simple", "file:///b/simple"]
    assert [v for k, v in pairs if k == "--find-links"] == ["/wheels", "/more-wheels"]
    assert ("--constraint", "/c.txt") in pairs


def test_environment_overrides_file(tmp_path, monkeypatch):
    _pip_env(monkeypatch, tmp_path, "[global]\nfind-links = /from-file\n", PIP_FIND_LINKS="/from-env")
    assert install_deps.pip_config(sys.executable)["find-links"] == ["/from-env"]


def test_no_index_and_nothing_configured():
    assert install_deps.uv_args({}) == ["--index-strategy", "unsafe-best-match"]
    assert "--no-index" in install_deps.uv_args({"no-index": ["true"]})
    assert "--no-index" not in install_deps.uv_args({"no-index": ["false"]})


# `pip config list` as pip 23.2 prints it (environment first) and as pip 26 does (files first)
PIP_23 = """:env:.find-links='/from-env'
:env:.constraint='/env-c.txt'
global.constraint='/etc/c.txt'
global.find-links='/from-file'
install.extra-index-url='\\nfile:///a\\nfile:///b'
global.extra-index-url='file:///g'
download.index-url='https://ignored.example'
"""


def test_precedence_does_not_depend_on_the_printed_order():
    pip_26 = "\n".join(sorted(PIP_23.splitlines(), key=lambda line: line.startswith(":env:")))
    for text in (PIP_23, pip_26):
        config = install_deps.parse_pip_config(text)
        assert config == {"find-links": ["/from-env"], "constraint": ["/env-c.txt"],
                          "extra-index-url": ["file:///a", "file:///b"]}, text
