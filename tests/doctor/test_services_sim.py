"""doctor against a real llama-server on the simulated node: unit state, /health, /props context,
port conflicts; a stopped service is reported and restarted by `doctor --fix`."""

from __future__ import annotations

import time

import pytest

from provisioner.engine import run
from provisioner.engine.context import ApplyContext
from provisioner.facts.services import LLAMA_BIN
from provisioner.operations.services import ServicesStep
from provisioner.sim import assets

from . import simenv
from .llama_bin import llama_server
from .test_doctor_sim import doctor_json, finding

pytestmark = pytest.mark.sim

VMID = 766
SERVER = {"ctx_size": 32768, "override_kv": ["llama.context_length=int:32768"], "threads": 1}


def _apply_services(loaded) -> None:
    cfg = loaded.config
    step = ServicesStep(cfg)
    conn = run.connect(cfg)
    try:
        ctx = run.gather_facts(cfg, conn, [step])
        for change in step.plan(ctx):
            change.apply(ApplyContext(cfg=cfg, pve=conn.pve, ssh=conn.ssh, plan=ctx))
    finally:
        conn.close()


def _wait_health(sim_node, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out, _ = sim_node.run(f"pct exec {VMID} -- curl -s -o /dev/null -w '%{{http_code}}' "
                                 "http://127.0.0.1:8080/health")
        if out.strip() == "200":
            return
        time.sleep(2)
    _, log, _ = sim_node.run(f"pct exec {VMID} -- journalctl -u llama-server -n 30 --no-pager")
    raise AssertionError(f"llama-server did not become healthy:\n{log}")


@pytest.fixture(scope="module")
def served(sim_node, tmp_path_factory):
    binary = llama_server()
    model = assets.smollm2_model()
    loaded = simenv.host_file(tmp_path_factory.mktemp("svc"), sim_node.conn, VMID, gpu={"enabled": False},
                              model={"path": str(model), "location": "container"}, gateway={"enabled": False},
                              server=SERVER)
    simenv.converge(loaded)
    rc, _, err = sim_node.run(
        f"pct exec {VMID} -- mkdir -p /srv/models {LLAMA_BIN.rsplit('/', 1)[0]} && "
        f"pct push {VMID} {model} /srv/models/{model.name} --perms 0644 && "
        f"pct push {VMID} {binary} {LLAMA_BIN} --perms 0755", timeout=300)
    assert rc == 0, err
    _apply_services(loaded)
    yield loaded
    sim_node.destroy_ct(VMID)


def test_missing_shared_library_is_found_then_installed(served, sim_node):
    # The static CPU build still links libgomp (OpenMP); the llama step's build deps bring it,
    # this container has none yet: llama-server crash-loops and doctor says why.
    _, data = doctor_json(served)
    f = finding(data, "cuda.links")
    assert f["status"] == "fail" and f["title"] == "llama-server cannot load libgomp.so.1", f
    assert "libgomp.so.1 => not found" in f["evidence"]["output"]
    assert finding(data, "services.llama_unit")["status"] in ("fail", "warn")
    rc, out, err = sim_node.run(f"pct exec {VMID} -- sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                                "apt-get install -y -q --no-install-recommends libgomp1'", timeout=600)
    assert rc == 0, out[-1500:] + err[-1500:]
    _wait_health(sim_node)
    _, data = doctor_json(served)
    assert finding(data, "cuda.links")["status"] == "ok"


def test_running_service_is_healthy(served):
    _, data = doctor_json(served)
    for fid in ("services.llama_unit", "services.llama_health", "services.model_file", "services.ports"):
        assert finding(data, fid)["status"] == "ok", finding(data, fid)
    ctx = finding(data, "services.context")
    assert ctx["status"] == "ok" and "llama-server /props" in ctx["evidence"]["output"]
    assert data["ssh_round_trips"] == 1 and data["seconds"] < 15
    print(f"doctor on a running service: {data['seconds']:.2f}s, {data['api_calls']} API calls")


def test_stopped_service_is_restarted_by_fix(served, sim_node):
    rc, _, err = sim_node.run(f"pct exec {VMID} -- systemctl stop llama-server")
    assert rc == 0, err
    code, data = doctor_json(served)
    f = finding(data, "services.llama_unit")
    assert code == 1 and f["status"] == "fail" and f["fixable"] and "inactive" in f["title"]
    assert finding(data, "services.llama_health")["status"] == "fail"
    code, data = doctor_json(served, "--fix", "--yes")
    assert finding(data, "services.llama_unit")["status"] == "ok"
    assert data["fixed"] == {"services.llama_unit": f"restart llama-server.service in CT {VMID}"}
    _wait_health(sim_node)


SQUATTER = ("systemctl stop llama-server\n"
            "systemd-run --unit squatter perl -MIO::Socket::INET "
            # no '$' in the script: systemd-run would expand it; the for loop keeps the socket alive
            "-e 'for (IO::Socket::INET->new(LocalPort => 8080, Listen => 1, ReuseAddr => 1) || die) { sleep 600 }'\n"
            "sleep 1\n")


def test_port_held_by_another_program(served, sim_node):
    rc, _, err = sim_node.run(f"pct exec {VMID} -- bash -s", stdin=SQUATTER.encode())
    assert rc == 0, err
    try:
        _, data = doctor_json(served)
        f = finding(data, "services.ports")
        assert f["status"] == "fail" and "port 8080 (server) is held by" in f["title"], f
        assert '(("perl"' in f["title"] and "server.port" in f["fix"]
    finally:
        sim_node.run(f"pct exec {VMID} -- sh -c 'systemctl stop squatter; systemctl start llama-server'")
    _wait_health(sim_node)
