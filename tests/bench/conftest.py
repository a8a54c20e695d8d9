"""A real llama-server (the cached static CPU build, the real tiny SmolLM2 model) and the real
gateway in front of it, both on 127.0.0.1 with API keys, for the benchmark tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_http import free_port, wait_http
from services.llama_bin import llama_server

from provisioner.operations.units import exec_start
from provisioner.sim import assets

ROOT = Path(__file__).resolve().parents[2]
LLAMA_KEY = "bench-llama-key-7f3a9c1e"
GATEWAY_KEY = "bench-gateway-key-51d0b2e8"




class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.llama_key = tmp / "llama-server.key"
        self.llama_key.write_text(LLAMA_KEY + "\n")
        self.gateway_key = tmp / "gateway.key"
        self.gateway_key.write_text(GATEWAY_KEY + "\n")
        self.llama_port, self.gateway_port = free_port(), free_port()
        self.llama_url = f"http://127.0.0.1:{self.llama_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.model = assets.smollm2_model()
        # a unit file as the services step writes it, with a literal --api-key to prove it is masked
        self.argv = [str(llama_server()), "-m", str(self.model), "--alias", "smollm2", "--host", "127.0.0.1",
                     "--port", str(self.llama_port), "-c", "4096", "--parallel", "1", "--threads", "2",
                     "--api-key-file", str(self.llama_key), "--metrics"]
        self.unit = tmp / "llama-server.service"
        # written by the services step's own exec_start (one argument per continuation line)
        self.unit.write_text("[Service]\nExecStart=" + exec_start([*self.argv, "--api-key", LLAMA_KEY]) + "\n")
        self.procs: list[subprocess.Popen] = []

    def start(self) -> Stack:
        llog = self.tmp / "llama.log"
        with open(llog, "w") as fh:
            self.procs.append(subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT))
        wait_http(self.llama_url + "/health", self.procs[-1], 120, llog)
        conf = self.tmp / "gateway.json"
        conf.write_text(json.dumps({"listen_port": self.gateway_port, "upstream_url": self.llama_url,
                                    "api_key_file": str(self.gateway_key),
                                    "upstream_api_key_file": str(self.llama_key), "local_model_id": "smollm2"}))
        glog = self.tmp / "gateway.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(glog, "w") as fh:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config", str(conf)],
                                               stdout=fh, stderr=subprocess.STDOUT, env=env))
        wait_http(self.gateway_url + "/health", self.procs[-1], 60, glog)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# module scope: the llama-server and gateway stop when the module that uses them ends
# (tests/bench is no package, so "package" scope lasted the whole session)
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("bench-stack")).start()
    yield s
    s.stop()
