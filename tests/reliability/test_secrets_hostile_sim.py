"""Secrets and hostile values on the simulated node, with the real CLI end to end.

One container is brought up with every step but the GPU stack (the llama.cpp build is
replaced by the services tests' prebuilt CPU llama-server), with:

- distinctive secrets: the node's API token and root password, a Hugging Face token
  (the model comes from a real HTTP server that answers like the hub and demands it),
  the gateway key and llama-server's API key;
- hostile-but-valid values: a hostname with dashes, a description full of ``$( )``,
  backticks, quotes, ``;`` and a newline, odd tags, a model name with dots and dashes.

Then the output of plan / up / status (human and ``--json``, verbose too) and of a failing
run (a wrong token), the task logs under the sim root, and ``ps -eo args`` sampled every
0.1 s on the machine during the runs (the host's and the container's processes share this
kernel, so one ``ps`` sees both) must not contain any secret; and no ``/tmp/pwned-*`` file
exists on the host or in the container.
"""

from __future__ import annotations

import json
import shlex
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

from provisioner.sim import assets
from provisioner.sim.hostfile import host_data

pytestmark = [pytest.mark.sim, pytest.mark.timeout(2400)]
sys.path.insert(0, str(Path(__file__).parents[1] / "services"))
from hub_server import HubServer  # noqa: E402 - the services tests' fake hub (a real HTTP server)
from llama_bin import install_script, llama_server  # noqa: E402

VMID = 903
CLI = "import sys; from provisioner.cli.main import run; run(sys.argv[1:])"
ONLY = "container,resolv,model,services,verify"
HF_TOKEN = "hf_PROVTESTsecretHF7d1c9a2e55"
GATEWAY_KEY = "gwkey-PROVTESTsecret-3b8e0f41"
SERVER_KEY = "srvkey-PROVTESTsecret-a92c6d07"
WRONG_TOKEN = "0000aaaa-PROVTEST-wrong-token-9f9f"
DESCRIPTION = "$(touch /tmp/pwned-desc) `touch /tmp/pwned-bt`; touch /tmp/pwned-semi 'q\" && x\nsecond $(id) line"
PWNED = ["/tmp/pwned-desc", "/tmp/pwned-bt", "/tmp/pwned-semi"]


class PsSampler:
    """``ps -eo args`` every 0.1 s in a thread; keeps every distinct line seen."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            self.lines.update(out.splitlines())
            self.samples += 1
            self._stop.wait(0.1)

    def __enter__(self) -> "PsSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def secret_file(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def world(sim_node, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secrets")
    for p in PWNED:
        Path(p).unlink(missing_ok=True)
    hub = HubServer({"org/smol-GGUF/smol.Q4_1.gguf": assets.smollm2_model()}, token=HF_TOKEN)
    data = host_data(sim_node.conn, vmid=VMID, hostname=f"llm-hostile-{VMID}", gpu=False, extra={
        "container": {"description": DESCRIPTION, "tags": ["team-a", "x+y.z", "_u"]},
        "llama_cpp": {"backend": "cpu", "source": {"tarball": str(assets.llama_source())}},
        "model": {"repo": "org/smol-GGUF", "file": "smol.Q4_1.gguf", "name": "smol-lm_2.v1",
                  "token": {"file": secret_file(tmp, "hf", HF_TOKEN)}, "host_dir": str(tmp / "host-models")},
        "server": {"host": "0.0.0.0", "ctx_size": 32768, "threads": 2, "health_timeout": 300,
                   "override_kv": ["llama.context_length=int:32768"],
                   "api_key": {"file": secret_file(tmp, "srv", SERVER_KEY)}},
        "gateway": {"api_key": {"file": secret_file(tmp, "gw", GATEWAY_KEY)}},
        "clients": {"output_dir": str(tmp / "clients")},
    })
    path = tmp / "host.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    outputs: list[str] = []

    def provision(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=1800,
                              env=env, stdin=subprocess.DEVNULL)
        outputs.extend([proc.stdout, proc.stderr])
        if ok and proc.returncode != 0:
            raise AssertionError(f"provision {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
        return proc

    try:
        with PsSampler() as ps:
            first = provision("--json", "up", str(path), "--yes", "--only", "container,model")
            code, _, err = sim_node.run(f"pct exec {VMID} -- sh -c {shlex.quote(install_script('secrets1'))}",
                                        stdin=llama_server().read_bytes())
            assert code == 0, err
            second = provision("--json", "up", str(path), "--yes", "--only", ONLY)
            provision("-v", "up", str(path), "--yes", "--only", ONLY)
            provision("plan", str(path))
            provision("--json", "plan", str(path))
            provision("status", str(path))
            provision("--json", "status", str(path))
            wrong = dict(data, proxmox=dict(data["proxmox"], auth=dict(
                data["proxmox"]["auth"], token_secret={"file": secret_file(tmp, "wrong", WRONG_TOKEN)})))
            bad_path = tmp / "wrong.yaml"
            bad_path.write_text(yaml.safe_dump(wrong, sort_keys=False))
            failed = [provision(*args, ok=False) for args in
                      (("plan", str(bad_path)), ("--json", "up", str(bad_path), "--yes"))]
        yield {"path": path, "tmp": tmp, "outputs": outputs, "ps": ps, "failed": failed,
               "first": json.loads(first.stdout.splitlines()[-1]), "second": json.loads(second.stdout.splitlines()[-1]),
               "hub": hub}
    finally:
        subprocess.run([sys.executable, "-c", CLI, "down", str(path), "--yes"], capture_output=True, env=env)
        hub.close()


def secrets(sim_node) -> dict[str, str]:
    values = {"API token": sim_node.token_secret, "root password": sim_node.root_password,
              "Hugging Face token": HF_TOKEN, "gateway key": GATEWAY_KEY, "llama-server key": SERVER_KEY,
              "wrong token": WRONG_TOKEN}
    out = dict(values)
    for name, v in values.items():
        out[name + " (url-encoded)"] = urllib.parse.quote(v, safe="")
    return out


def leaks(text: str, sim_node) -> list[str]:
    return [name for name, v in secrets(sim_node).items() if v and v in text]


def test_the_runs_did_what_they_should(world):
    steps = {(c["step"], c["action"]) for c in world["first"]["applied"] + world["second"]["applied"]}
    assert ("container", "create") in steps and ("services", "start") in steps, steps
    assert any(r[2] == f"Bearer {HF_TOKEN}" for r in world["hub"].requests)  # the token was really used
    assert all(p.returncode == 1 for p in world["failed"])
    assert all("401" in p.stderr or "authentication" in p.stderr.lower() for p in world["failed"]), \
        [p.stderr for p in world["failed"]]


def test_no_secret_in_any_output(world, sim_node):
    assert len(world["outputs"]) == 2 * 9
    for i, text in enumerate(world["outputs"]):
        assert not leaks(text, sim_node), (i, leaks(text, sim_node))


def test_no_secret_in_task_logs_or_error_logs(world, sim_node):
    files = [p for p in (sim_node.sim_root / "tasks").rglob("*") if p.is_file()]
    assert files, "no task logs under the sim root"
    error_log = Path.home() / ".cache" / "provision" / "last-error.log"
    files += [error_log] if error_log.exists() else []
    for f in files:
        assert not leaks(f.read_text(errors="replace"), sim_node), f


def test_no_secret_on_any_command_line(world, sim_node):
    ps = world["ps"]
    assert ps.samples > 50 and any(f"pct exec {VMID}" in ln or "llama-server" in ln for ln in ps.lines)
    for line in ps.lines:
        assert not leaks(line, sim_node), line


def test_hostile_values_had_no_side_effect(world, sim_node):
    for p in PWNED:
        assert not Path(p).exists(), p
    code, out, _ = sim_node.run(f"pct exec {VMID} -- sh -c 'ls /tmp; ls /root'")
    assert code == 0 and "pwned" not in out
    code, conf, _ = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf")
    assert "#$(touch /tmp/pwned-desc) `touch /tmp/pwned-bt`; touch /tmp/pwned-semi" in conf
    assert f"hostname: llm-hostile-{VMID}" in conf and "tags: _u;provision;team-a;x+y.z" in conf


def test_the_service_answers_only_with_the_gateway_key(world, sim_node):
    import requests

    code, ip, _ = sim_node.run(f"pct exec {VMID} -- sh -c \"hostname -I | cut -d' ' -f1\"")
    url = f"http://{ip.strip()}:4000/v1/models"
    assert requests.get(url, timeout=10).status_code == 401
    ok = requests.get(url, headers={"x-api-key": GATEWAY_KEY}, timeout=10)
    assert ok.status_code == 200 and "smol-lm_2.v1" in ok.text
