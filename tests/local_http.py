"""Helpers for tests that start real local servers (llama-server, the gateway): a free port, and
waiting until a URL answers 200 while the process that should serve it is still alive."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 120, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log tail if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = f"; log:\n{log.read_text()[-3000:]}" if log is not None else ""
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}){tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {seconds} s")
