"""Interrupted `provision up` on the simulated node: the next `up` converges, loses nothing,
and no half-installed build or unit is ever left serving.

Faults, each at a named step of a real `provision -v up` (the CLI in a subprocess):
- process killed: SIGKILL as soon as its output shows the step started (plus a short delay
  so the step is mid-way: the model push, the gateway install);
- SSH connection dropped: the sim's `drop_ssh_connections` at the same moment;
- Proxmox task failed: the sim's `fail_next_task` for create, start and snapshot tasks.
After each: the invariants below hold, the next `up` succeeds, and the one after plans nothing.
The llama.cpp CPU build (~5 min) is interrupted once, in its own test at the end.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from provisioner.sim import assets
from provisioner.sim.hostfile import host_data

pytestmark = [pytest.mark.sim, pytest.mark.timeout(3600)]
sys.path.insert(0, str(Path(__file__).parents[1] / "services"))
from llama_bin import install_script, llama_server  # noqa: E402 - the services tests' prebuilt CPU server

VMID = 905
CLI = "import sys; from provisioner.cli.main import run; run(sys.argv[1:])"
ONLY = "container,resolv,model,services,verify"
GATEWAY_KEY = "gwkey-interrupt-test-51c2"
FIGURES = Path("/tmp/provision-interruptions.json")
survived: list[str] = []


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def up(path: Path, *, only: str = ONLY, check: bool = True, timeout: int = 1800) -> dict:
    proc = subprocess.run(cli("--json", "up", str(path), "--yes", "--only", only), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"up exited {proc.returncode}:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"rc": proc.returncode}


def interrupt(path: Path, step: str, how: str, sim_node, *, delay: float = 0.5, only: str = ONLY,
              action: str | None = None, trigger: str | None = None) -> int:
    """Run `up -v`; when the step's first change starts, kill the CLI or drop SSH. Returns the exit code."""
    proc = subprocess.Popen(cli("-v", "up", str(path), "--yes", "--only", only), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    seen = []
    fired = False
    for line in proc.stderr:
        seen.append(line)
        text = line.removeprefix("… ").strip()
        if trigger is not None:
            hit = text.startswith(trigger)
        else:
            hit = (text.startswith(f"{step}: ") and not text.endswith(": planning")
                   and (action is None or action in text))
        if not fired and hit:
            time.sleep(delay)
            if how == "kill":
                proc.send_signal(signal.SIGKILL)
            else:
                sim_node.faults.drop_ssh_connections()
            fired = True
            if how == "kill":
                break
    code = proc.wait(timeout=600)
    assert fired, f"step {step} never started:\n{''.join(seen[-30:])}"
    survived.append(f"{how} at {step}" + (f" ({action})" if action else ""))
    return code


def ct(sim_node, script: str) -> tuple[int, str]:
    code, out, err = sim_node.run(f"pct exec {VMID} -- bash -s", stdin=script.encode())
    return code, out + err


def assert_nothing_half_done(sim_node, model_sha: str) -> None:
    """What may be true right after an interruption (the CT may be stopped or not exist yet)."""
    code, out, _ = sim_node.run(f"pct status {VMID}")
    if code != 0 or "running" not in out:
        return
    code, out = ct(sim_node, f"""
cur=/opt/provision/llama.cpp/current
if [ -e "$cur" ] || [ -L "$cur" ]; then
  [ -x "$cur/bin/llama-server" ] && [ -s "$cur/BUILD-STAMP.json" ] || echo "BAD: current points at a half build"
fi
for unit in llama-server provision-gateway; do
  if systemctl is-active -q "$unit"; then
    exe=$(systemctl show -p ExecStart --value "$unit" | sed -n 's/.*path=\\([^ ;]*\\).*/\\1/p')
    [ -z "$exe" ] || [ -x "$exe" ] || echo "BAD: $unit active but $exe missing"
  fi
done
true
""")
    assert "BAD" not in out, out
    # the model: either absent, or complete and verified (a partial download never has the final name)
    code, out, _ = sim_node.run(f"pct exec {VMID} -- sh -c 'ls /srv/models 2>/dev/null; true'")
    for name in out.split():
        if name.endswith(".gguf"):
            code, sha, _ = sim_node.run(f"pct exec {VMID} -- sha256sum /srv/models/{name}")
            assert sha.split()[0] == model_sha, f"/srv/models/{name} is incomplete"


#: runs that needed one more `up` to plan nothing (the services step's restart check; reported)
settle: list[str] = []


def assert_converged(path: Path, sim_node) -> None:
    again = up(path)
    if again["applied"]:
        settle.append("; ".join(c["summary"] for c in again["applied"]))
        again = up(path)
    assert again["applied"] == [], [c["summary"] for c in again["applied"]]
    code, out = ct(sim_node, "dpkg --audit; systemctl is-active llama-server provision-gateway; "
                             "readlink /opt/provision/llama.cpp/current")
    assert "active\nactive" in out and "builds/" in out, out
    assert "half" not in out, out
    code, out = ct(sim_node, "python3 -c \"import urllib.request as u; print(u.urlopen(u.Request("
                             "'http://127.0.0.1:4000/v1/models', headers={'x-api-key': '" + GATEWAY_KEY +
                             "'}), timeout=10).read().decode())\"")
    assert "smollm2" in out, out


@pytest.fixture(scope="module")
def host(sim_node, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupt")
    key = tmp / "gw"
    key.write_text(GATEWAY_KEY + "\n")
    key.chmod(0o600)
    data = host_data(sim_node.conn, vmid=VMID, gpu=False, extra={
        # host_cache off: the kill test below must interrupt a real compile, and this spec is the one the
        # e2e and GPU tests keep in the (simulated) host's build cache
        "llama_cpp": {"backend": "cpu", "source": {"tarball": str(assets.llama_source()), "subdir": "llama.cpp"},
                      "host_cache": False},
        "model": {"path": str(assets.smollm2_model()), "name": "smollm2", "location": "container"},
        "server": {"host": "0.0.0.0", "ctx_size": 32768, "threads": 2, "health_timeout": 300,
                   "override_kv": ["llama.context_length=int:32768"]},
        "gateway": {"api_key": {"file": str(key)}},
        "clients": {"output_dir": str(tmp / "clients")},
    })
    path = tmp / "host.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sha = hashlib.sha256(assets.smollm2_model().read_bytes()).hexdigest()
    try:
        yield {"path": path, "data": data, "tmp": tmp, "sha": sha}
    finally:
        subprocess.run(cli("down", str(path), "--yes"), capture_output=True, timeout=600)
        FIGURES.write_text(json.dumps({"faults_survived": survived, "count": len(survived),
                                       "extra_up_to_settle": settle}, indent=1))


def test_failed_create_task_then_up_converges(sim_node, host):
    path = host["path"]
    sim_node.faults.fail_next_task("vzcreate", "injected: storage went away")
    first = subprocess.run(cli("up", str(path), "--yes", "--only", "container"), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 1 and "injected: storage went away" in first.stderr
    survived.append("failed task: vzcreate (PVE removes the half-made CT; the next up creates it)")
    try:
        up(path, only="container")
    finally:
        sim_node.destroy_ct(VMID)  # clean slate for the tests below


def test_failed_start_task_then_up_converges(sim_node, host):
    path = host["path"]
    sim_node.faults.fail_next_task("vzstart", "injected: start failed")
    second = subprocess.run(cli("up", str(path), "--yes", "--only", "container"), capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 1 and "injected: start failed" in second.stderr, second.stderr
    survived.append("failed task: vzstart")
    assert_nothing_half_done(sim_node, host["sha"])
    rep = up(path, only="container")
    assert ("container", "start") in [(c["step"], c["action"]) for c in rep["applied"]]
    # the llama step's place in the CT: the services tests' prebuilt server, laid out like a build
    code, _, err = sim_node.run(f"pct exec {VMID} -- sh -c {shlex.quote(install_script('interrupt1'))}",
                                stdin=llama_server().read_bytes())
    assert code == 0, err
    up(path)
    assert_converged(path, sim_node)


@pytest.mark.parametrize("step,how,delay", [
    ("model", "kill", 0.3), ("model", "ssh", 0.3), ("resolv", "kill", 0.0), ("services", "kill", 1.0),
    ("services", "ssh", 1.0), ("verify", "kill", 0.5)])
def test_interrupted_step_then_up_converges(sim_node, host, step, how, delay):
    if step == "model":  # make the model step do work again: the file is gone
        ct(sim_node, "rm -f /srv/models/*.gguf /srv/models/*.provision.json")
    elif step == "resolv":  # the trap the resolv step removes
        code, out = ct(sim_node, "chattr +i /etc/resolv.conf")
        assert code == 0, out
    else:  # a changed llama-server flag: the services step rewrites the unit and restarts, then verify runs
        threads = 2 if host["data"]["server"]["threads"] == 1 else 1
        host["data"] = dict(host["data"], server=dict(host["data"]["server"], threads=threads))
        host["path"].write_text(yaml.safe_dump(host["data"], sort_keys=False))
    code = interrupt(host["path"], step, how, sim_node, delay=delay)
    assert code != 0 or how == "ssh"
    assert_nothing_half_done(sim_node, host["sha"])
    up(host["path"])
    assert_converged(host["path"], sim_node)


def test_failed_snapshot_changes_nothing(sim_node, host, tmp_path):
    data = dict(host["data"], container=dict(host["data"]["container"], memory_mb=2304))
    host["data"] = data
    changed = tmp_path / "mem.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    before = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf")[1]
    sim_node.faults.fail_next_task("vzsnapshot", "injected: snapshot failed")
    proc = subprocess.run(cli("up", str(changed), "--yes", "--only", ONLY), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1 and "injected: snapshot failed" in proc.stderr
    assert "container.snapshot: false" in proc.stderr  # the way out is named
    survived.append("failed task: vzsnapshot")
    after = sim_node.run(f"cat /etc/pve/lxc/{VMID}.conf")[1]
    assert after.split("\n[")[0] == before.split("\n[")[0]  # the CT was not touched
    up(changed)
    host["path"].write_text(changed.read_text())
    assert_converged(host["path"], sim_node)


def test_kill_during_the_llama_build_keeps_the_old_build_serving(sim_node, host):
    """One interrupted CPU build (~5 min): `current` keeps the previous build until the new one is whole."""
    code, before = ct(sim_node, "readlink /opt/provision/llama.cpp/current")
    assert "builds/interrupt1" in before
    # killed while the compiler runs (the progress line says "building llama-server N%")
    code = interrupt(host["path"], "llama", "kill", sim_node, delay=5, only="container,llama",
                     trigger="llama.cpp: building llama-server")
    assert code != 0
    assert_nothing_half_done(sim_node, host["sha"])
    code, out = ct(sim_node, "readlink /opt/provision/llama.cpp/current; systemctl is-active llama-server")
    assert "builds/interrupt1" in out and "active" in out, out  # still the old, complete build, serving
    rep = up(host["path"], only="container,llama", timeout=3000)
    assert ("llama", "build") in [(c["step"], c["action"]) for c in rep["applied"]]
    up(host["path"], only=ONLY)
    assert_converged(host["path"], sim_node)
