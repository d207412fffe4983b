"""tools/install.py hands pip's configuration to uv: the sources and caps pip would use here."""

import importlib.util
import subprocess
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("install", Path(__file__).parents[1] / "tools" / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)

PIP_CONFIG = """:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
"""


def fake_config(monkeypatch, text):
    done = subprocess.CompletedProcess([], 0, stdout=text, stderr="")
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: done)


def test_every_source_and_cap_pip_uses_reaches_uv(monkeypatch):
    fake_config(monkeypatch, PIP_CONFIG)
    settings = install.pip_settings()
    assert settings["extra-index-url"] == ["file:///opt/pypi/simple", "file:///opt/pypi-more/simple"]
    cmd = install.uv_command(settings)
    pairs = list(zip(cmd, cmd[1:], strict=False))
    assert ("--find-links", "/opt/wheels") in pairs
    assert ("--constraint", "/etc/xdg/pip/constraints.txt") in pairs
    assert ("--extra-index-url", "file:///opt/pypi/simple") in pairs
    assert ("--extra-index-url", "file:///opt/pypi-more/simple") in pairs
    assert ("--python", sys.executable) in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's rule: best version over all indexes
    assert "default-timeout" not in " ".join(cmd)


def test_uv_compiles_bytecode_as_pip_does(monkeypatch):
    """pip writes .pyc files at install time, uv does not unless asked; with PYTHONDONTWRITEBYTECODE set (as in
    this project's CI) nothing writes them later, and every process re-reads torch's and transformers' sources
    (importing them took 31 s instead of 12 s in a fresh clone's environment, for every kernel and worker)."""
    fake_config(monkeypatch, "")
    assert "--compile-bytecode" in install.uv_command(install.pip_settings())


def test_no_pip_configuration_gives_plain_uv(monkeypatch):
    fake_config(monkeypatch, "")
    cmd = install.uv_command(install.pip_settings())
    assert not {"--find-links", "--constraint", "--index-url", "--extra-index-url"} & set(cmd)
