"""Fixtures: the real simulated API server (HTTPS) on a test directory backend."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import urllib3

from provisioner.sim.api.server import SimApi
from provisioner.sim.pve.conf import ConfStore, PveConf

from .dirbackend import DirBackend, tiny_template

ROOT_PASSWORD = "sim-root-pw"
TOKEN_ID = "root@pam!provision"
TOKEN_SECRET = "0b0e6f5e-7d7a-4b59-9a3c-sim-secret"

warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)


@dataclass
class Sim:
    api: SimApi
    backend: DirBackend
    root: Path

    @property
    def base(self) -> str:
        return self.api.url()

    def session(self) -> requests.Session:
        """A session that trusts exactly the simulator's self-signed certificate."""
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would replace our pinned certificate
        s.verify = str(self.api.cert)
        return s

    def ticket(self, user: str = "root@pam", password: str = ROOT_PASSWORD) -> requests.Session:
        """A requests session logged in with a password ticket (cookie + CSRF header)."""
        s = self.session()
        r = s.post(f"{self.base}/access/ticket", data={"username": user, "password": password})
        r.raise_for_status()
        data = r.json()["data"]
        s.cookies.set("PVEAuthCookie", data["ticket"])
        s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
        return s

    def token(self, tokenid: str = TOKEN_ID, secret: str = TOKEN_SECRET) -> requests.Session:
        s = self.session()
        s.headers["Authorization"] = f"PVEAPIToken={tokenid}={secret}"
        return s

    def write_ct(self, vmid: int, values: dict[str, str], *, running: bool = False) -> None:
        """Put a CT config (and rootfs dir) in place directly, as if created earlier."""
        conf = PveConf()
        conf.values.update(values)
        ConfStore(self.root).save(vmid, conf)
        rootfs = self.root / "storage" / "local-lvm" / "images" / str(vmid) / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        if running:
            (rootfs.parent / "running").write_text("1")

    def wait_task(self, session: requests.Session, upid: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = session.get(f"{self.base}/nodes/{self.api.node}/tasks/{upid}/status")
            r.raise_for_status()
            status = r.json()["data"]
            if status["status"] == "stopped":
                return status
            time.sleep(0.05)
        raise AssertionError(f"task {upid} did not finish in {timeout}s")

    def settings(self, **changes: Any) -> None:
        path = self.root / "sim.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))


def _make_sim(tmp_path: Path, version: str) -> Iterator[Sim]:
    root = tmp_path / "sim"
    root.mkdir()
    (root / "sim.json").write_text(json.dumps({
        "version": version, "node": "pve", "root_password": ROOT_PASSWORD,
        "tokens": {TOKEN_ID: TOKEN_SECRET}}))
    cache = root / "storage" / "local" / "template" / "cache"
    cache.mkdir(parents=True)
    tiny_template(cache / "debian-12-standard_12.12-1_amd64.tar.gz")
    backend = DirBackend(root)
    api = SimApi(root, backend, version=version, node="pve", port=0).start_in_thread()
    try:
        yield Sim(api, backend, root)
    finally:
        api.stop_thread()


@pytest.fixture(params=["8.4", "9.1"])
def sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sim]:
    """The API server for each PVE version."""
    yield from _make_sim(tmp_path, request.param)


@pytest.fixture
def sim9(tmp_path: Path) -> Iterator[Sim]:
    yield from _make_sim(tmp_path, "9.1")


@pytest.fixture
def sim8(tmp_path: Path) -> Iterator[Sim]:
    yield from _make_sim(tmp_path, "8.4")
