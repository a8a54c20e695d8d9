"""The services step planned from facts: writes only what differs, restarts only what is affected."""

from __future__ import annotations

import hashlib

from provisioner import __version__
from provisioner.facts.services import (
    ServiceFacts,
    UnitState,
    parse_services,
    services_command,
)
from provisioner.operations.services import ServicesStep, sha
from provisioner.operations.units import desired_units
from provisioner.operations.verify import VerifyStep, why_verify
from provisioner.operations.wheel import source_sha

from .helpers import config, ctx

from provisioner.gpu_access import GPU_GID  # noqa: E402

LLAMA, GW = "llama-server", "provision-gateway"


def converged(cfg, **over) -> ServiceFacts:
    files = {p: sha(c) for p, c in desired_units(cfg, 252).items()}
    files.update({"/etc/provision/llama-server.key": "k1" * 32, "/etc/provision/gateway.key": "k2" * 32})
    values = {"files": files, "units": {LLAMA: UnitState("active", "enabled"), GW: UnitState("active", "enabled")},
                  "recorded": {LLAMA: "d1", GW: "d2"}, "inputs": {LLAMA: "d1", GW: "d2"},
                  "health": {"llama": 200, "gateway": 200},
                  "gateway_installed": {"version": __version__, "source_sha": source_sha()},
                  "users": frozenset({"llama", "provision-gw"}), "systemd_version": 252, "have_curl": True,
                  "user_groups": {"llama": frozenset({998, GPU_GID}), "provision-gw": frozenset({997})}}
    values.update(over)
    return ServiceFacts(**values)


def plan(cfg, facts):
    return [(c.action, c.summary) for c in ServicesStep(cfg).plan(ctx(cfg, {"services.ct": facts}))]


def test_fresh_container_gets_everything_once() -> None:
    cfg = config()
    assert plan(cfg, ServiceFacts(systemd_version=252)) == [
        ("create", "create system users llama, provision-gw"),
        ("write", "generate a key into /etc/provision/llama-server.key"),
        ("write", "generate a key into /etc/provision/gateway.key"),
        ("install", f"install provision {__version__} into /opt/provision/gateway/venv"),
        ("write", "write /etc/systemd/system/llama-server.service"),
        ("write", "write /usr/local/bin/provision-llama-gpu-check"),
        ("write", "write /etc/systemd/system/provision-gateway.service"),
        ("write", "write /etc/provision/gateway.json"),
        ("start", ("start llama-server (changed: llama-server.key, llama-server.service, "
                  "provision-llama-gpu-check; it is inactive; it is not-found at boot)")),
        ("start", ("start provision-gateway (changed: gateway.json, gateway.key, llama-server.key, "
                  "provision-gateway.service, installed.json; it is inactive; it is not-found at boot)")),
    ]


def test_converged_plans_nothing() -> None:
    cfg = config()
    assert plan(cfg, converged(cfg)) == []
    assert VerifyStep(cfg).plan(ctx(cfg, {"services.ct": converged(cfg)})) == []


def test_changed_flag_restarts_exactly_llama_server() -> None:
    old = config()
    new = config({"server": {"ctx_size": 65536}})
    assert plan(new, converged(old)) == [
        ("write", "write /etc/systemd/system/llama-server.service"),
        ("restart", "restart llama-server (changed: llama-server.service)")]


def test_new_binary_or_model_restarts_llama_server_only() -> None:
    cfg = config()
    facts = converged(cfg, inputs={LLAMA: "d1-new", GW: "d2"})
    assert plan(cfg, facts) == [
        ("restart", "restart llama-server (what it runs from changed since it started (binary, model or files))")]


def test_configured_key_change_restarts_both_services() -> None:
    import os
    os.environ["LLAMA_KEY_T"] = "a-new-server-key"
    cfg = config({"server": {"api_key": {"env": "LLAMA_KEY_T"}}})
    actions = plan(cfg, converged(cfg))
    assert [a for a, _ in actions] == ["write", "restart", "restart"]
    facts = converged(cfg)
    facts.files["/etc/provision/llama-server.key"] = hashlib.sha256(b"a-new-server-key\n").hexdigest()
    assert plan(cfg, facts) == []


def test_failed_unit_is_started_and_verify_is_planned() -> None:
    cfg = config()
    facts = converged(cfg, units={LLAMA: UnitState("failed", "enabled"), GW: UnitState("active", "enabled")},
                      health={"llama": 0, "gateway": 503})
    assert plan(cfg, facts) == [("start", "start llama-server (it is failed)")]
    assert why_verify(cfg, facts) == "not healthy: gateway /health 503, llama /health no answer"
    assert why_verify(cfg, converged(cfg, verify_pending=True)) == "services were (re)started and not verified yet"


def test_services_facts_parse() -> None:
    cfg = config()
    assert "health gateway" in services_command(cfg)
    out = ("file /etc/provision/gateway.json " + "f" * 64 + "\n"
           "unit llama-server active enabled\nunit provision-gateway inactive not-found\n"
           "recorded llama-server " + "1" * 64 + "\n"
           'installed {"version": "0.1.0", "source_sha": "x"}\n'
           "user llama 998 59999\nsystemd 252\nverify-pending\nhave-curl\nip 10.0.3.50\n"
           "inputs llama-server " + "1" * 64 + "\nhealth llama 200\nhealth gateway 000\n")
    f = parse_services(out, 0)
    assert f.files == {"/etc/provision/gateway.json": "f" * 64}
    assert f.units[GW] == UnitState("inactive", "not-found") and f.units[LLAMA].active == "active"
    assert f.recorded == f.inputs == {LLAMA: "1" * 64}
    assert f.gateway_installed == {"version": "0.1.0", "source_sha": "x"}
    assert (f.users, f.systemd_version, f.verify_pending, f.have_curl, f.ip) == (
        frozenset({"llama"}), 252, True, True, "10.0.3.50")
    assert f.user_groups == {"llama": frozenset({998, GPU_GID})}
    assert f.health == {"llama": 200, "gateway": 0}
    assert f.healthy(gateway=False) and not f.healthy(gateway=True)


def test_llama_outside_the_gpu_group_joins_it_and_restarts() -> None:
    """The devN nodes are gid=GPU_GID,mode=0660 (gpu_access.py): llama must be in that group,
    and a running llama-server only gets it by a restart."""
    cfg = config()
    facts = converged(cfg, user_groups={"llama": frozenset({998}), "provision-gw": frozenset({997})})
    assert plan(cfg, facts) == [
        ("create", f"add llama to provision-gpu (gid {GPU_GID}, the GPU nodes' group)"),
        ("restart", "restart llama-server (llama joins provision-gpu; a running process keeps its old groups)")]


def test_no_model_no_services() -> None:
    cfg = config(base="""
proxmox: {endpoint: "https://pve.lan:8006", node: pve, auth: {token_id: "root@pam!p", token_secret: {env: T}}}
container: {vmid: 120}
""")
    assert ServicesStep(cfg).facts == [] and ServicesStep(cfg).plan(ctx(cfg)) == []


def test_a_planned_llama_rebuild_restarts_llama_server_in_the_same_run() -> None:
    """The llama step does not re-gather facts after building: services plans the restart from its fact."""
    from provisioner.facts.llama import LlamaBuild

    cfg = config({"llama_cpp": {"backend": "cpu"}})
    facts = converged(cfg)
    old_build = LlamaBuild(stamp={"hash": "0ld"}, current="0ld", binary=True)
    changes = ServicesStep(cfg).plan(ctx(cfg, {"services.ct": facts, "ct.llama": old_build}))
    assert [(c.action, c.summary) for c in changes] == [("restart", "restart llama-server (changed: the llama-server build)")]
    assert plan(cfg, facts) == []  # without the llama step's fact (not in this run): nothing
