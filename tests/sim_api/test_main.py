"""``python -m provisioner.sim.api.server --root`` serves and records its port and fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from .conftest import TOKEN_ID, TOKEN_SECRET


def test_module_entry_point(tmp_path: Path) -> None:
    (tmp_path / "sim.json").write_text(json.dumps({
        "version": "8.4", "node": "pve", "root_password": "pw-12345", "tokens": {TOKEN_ID: TOKEN_SECRET}}))
    (tmp_path / "sim.json").chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.sim.api.server", "--root", str(tmp_path),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert first.startswith("simulated PVE 8.4.2 API on https://127.0.0.1:"), first + second
        settings = json.loads((tmp_path / "sim.json").read_text())
        assert second.strip() == f"fingerprint {settings['fingerprint']}"
        assert (tmp_path / "sim.json").stat().st_mode & 0o777 == 0o600
        s = requests.Session()
        s.trust_env = False
        s.verify = str(tmp_path / "pve-ssl.pem")
        s.headers["Authorization"] = f"PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}"
        r = s.get(f"https://127.0.0.1:{settings['api_port']}/api2/json/version")
        assert r.json()["data"]["version"] == "8.4.2"
    finally:
        proc.terminate()
        proc.wait(10)
