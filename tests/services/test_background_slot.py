"""The background slot for real (issue 20, point 13): the cached static llama-server (b11312) with the
real SmolLM2-135M model, started with the slot flags `provision` writes into its unit. A short request
sent while a long one generates is answered before the long one ends; with one slot it waits."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from provisioner.config import load_text
from provisioner.operations.units import slot_layout
from provisioner.sim import assets

from .llama_bin import llama_server

HOST = ("proxmox: {endpoint: 'https://p:8006', node: pve, auth: {token_id: 'root@pam!x', token_secret: {env: X}}}\n"
        "clients: {claude_code: false}\nserver: {ctx_size: 2048, background_slot: %d}\n")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _serve(tmp: Path, background: int):
    flags, per_slot = slot_layout(load_text(HOST % background, "h.yaml").config)
    port = _free_port()
    log = open(tmp / f"llama-{background}.log", "w")
    proc = subprocess.Popen([str(llama_server()), "-m", str(assets.smollm2_model()), "--host", "127.0.0.1",
                             "--port", str(port), *flags, "--threads", "2"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / f"llama-{background}.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    return proc, url, per_slot


def _race(url: str) -> tuple[float, float]:
    """When (seconds from the start) a long and a short request, sent 1 s apart, finished."""
    t0 = time.monotonic()
    ends: dict[str, float] = {}

    def long() -> None:
        _post(url + "/completion", {"prompt": "Write a very long story about a lighthouse keeper.",
                                    "n_predict": 150, "ignore_eos": True, "cache_prompt": False})
        ends["long"] = time.monotonic() - t0

    worker = threading.Thread(target=long)
    worker.start()
    time.sleep(1.0)
    _post(url + "/completion", {"prompt": "Title:", "n_predict": 4, "cache_prompt": False})
    ends["short"] = time.monotonic() - t0
    worker.join()
    return ends["long"], ends["short"]


@pytest.mark.timeout(600)
def test_a_short_request_is_not_held_up_by_a_long_one(tmp_path: Path) -> None:
    proc, url, per_slot = _serve(tmp_path, 512)
    try:
        with urllib.request.urlopen(url + "/props", timeout=10) as r:
            props = json.loads(r.read())
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == per_slot == 2048  # the main slot keeps it all
        long_end, short_end = _race(url)
        assert short_end < long_end, (short_end, long_end)
    finally:
        proc.terminate()
        proc.wait(30)
    # the same race with one slot: the short request waits for the long one
    proc, url, _ = _serve(tmp_path, 0)
    try:
        long_end, short_end = _race(url)
        assert short_end >= long_end, (short_end, long_end)
    finally:
        proc.terminate()
        proc.wait(30)
