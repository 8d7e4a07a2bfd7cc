"""Helpers for tests that start a real server on this machine: a free loopback port, and a bounded
wait until the server answers (it fails with the server's log when it dies or never answers)."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(url: str, proc: subprocess.Popen, *, what: str, timeout_s: float,
                         log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits first or ``timeout_s`` passes."""
    def log_tail() -> str:
        return log_path.read_text()[-3000:] if log_path is not None and log_path.exists() else ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{what} at {url} did not answer within {timeout_s} s: {log_tail()}")
