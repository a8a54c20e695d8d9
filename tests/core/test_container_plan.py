"""Container convergence planned from facts: tests are data (facts in, changes out)."""

from __future__ import annotations

import textwrap

import pytest

from provisioner.config import load_text
from provisioner.engine.context import PlanContext
from provisioner.errors import RefusedError
from provisioner.facts.pve import MARKER_LINE, ContainerState, PveFacts
from provisioner.operations.container import ContainerStep, desired_config, is_root_only, same

HOST = textwrap.dedent("""\
    proxmox:
      endpoint: https://pve.lan:8006
      node: pve
      auth: {token_id: root@pam!p, token_secret: {env: T}}
    container:
      vmid: 120
      hostname: llm
      cores: 4
      memory_mb: 8192
      swap_mb: 512
      tags: [LLM]
      network: {bridge: vmbr0, ip: 10.0.3.50/24, gateway: 10.0.3.1}
      mounts: [{host: /tank/models, path: /srv/models, read_only: true}]
    gpu: {enabled: false}
    """)

# What PVE 9 answers for the container that HOST describes: its own spellings, extra keys.
CONVERGED = {
    "arch": "amd64", "cores": "4", "hostname": "llm", "memory": "8192", "swap": "512", "onboot": "1",
    "ostype": "debian", "tags": "llm;provision", "features": "nesting=1",
    "net0": "name=eth0,bridge=vmbr0,gw=10.0.3.1,hwaddr=BC:24:11:AA:BB:CC,ip=10.0.3.50/24,type=veth",
    "mp0": "/tank/models,mp=/srv/models,ro=1", "rootfs": "local-lvm:vm-120-disk-0,size=64G",
    "unprivileged": "0", "description": f"{MARKER_LINE} (do not remove this line)\n",
}


def ctx_for(config: dict | None, *, status: str = "running", pending: dict | None = None,
            host: str = HOST) -> PlanContext:
    cfg = load_text(host, "h.yaml").config
    ct = None if config is None else ContainerState(vmid=120, config=config, digest="d1",
                                                    pending=pending or {}, status=status)
    return PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=ct, vmid=120),
                       facts={}, root_path="ssh")


def plan(ctx: PlanContext) -> list[tuple[str, list[str]]]:
    return [(c.action, sorted(c.diff)) for c in ContainerStep().plan(ctx)]


def test_converged_container_plans_nothing() -> None:
    assert plan(ctx_for(dict(CONVERGED))) == []


def test_missing_container_is_created_then_started() -> None:
    changes = ContainerStep().plan(ctx_for(None))
    assert [c.action for c in changes] == ["create", "start"]
    assert changes[0].diff["unprivileged"] == (None, "0")
    assert changes[0].diff["rootfs"] == (None, "local-lvm:64")
    assert changes[0].diff["tags"] == (None, "llm;provision")


SCENARIOS = [
    ("one changed key", {"cores": "2"}, [("update", ["cores"])]),
    ("tags in another order and case", {"tags": "provision;LLM"}, []),
    ("net0 without the gateway", {"net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=10.0.3.50/24,type=veth"},
     [("update", ["net0"])]),
    ("ro written as a word", {"mp0": "/tank/models,mp=/srv/models,ro=true"}, []),
    ("smaller disk grows", {"rootfs": "local-lvm:vm-120-disk-0,size=32G"}, [("resize", ["rootfs size"])]),
    ("stopped container is started", {"__status": "stopped"}, [("start", [])]),
]


@pytest.mark.parametrize("name,patch,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenarios(name: str, patch: dict, expected: list) -> None:
    config = dict(CONVERGED)
    status = patch.pop("__status", "running") if "__status" in patch else "running"
    config.update(patch)
    assert plan(ctx_for(config, status=status)) == expected


def test_pending_keys_are_reported_not_restarted_by_default() -> None:
    ctx = ctx_for(dict(CONVERGED), pending={"cores": "4"})
    assert plan(ctx) == []
    assert ctx.notes == ["CT 120: cores stay pending until the container restarts; run `provision up --restart` "
                         "(or set container.restart: when-needed)"]


def test_pending_keys_restart_when_allowed() -> None:
    ctx = ctx_for(dict(CONVERGED), pending={"cores": "4"})
    ctx.allow_restart = True
    assert plan(ctx) == [("restart", ["cores"])]


def test_foreign_container_is_refused() -> None:
    foreign = {k: v for k, v in CONVERGED.items() if k not in ("tags", "description")}
    with pytest.raises(RefusedError) as info:
        ContainerStep().plan(ctx_for(foreign))
    assert "was not created by provision" in str(info.value)
    assert "container.adopt: true" in str(info.value)


def test_adopted_container_gets_the_marker_and_keeps_its_description() -> None:
    foreign = {k: v for k, v in CONVERGED.items() if k not in ("tags",)}
    foreign["description"] = "my notes\n"
    ctx = ctx_for(foreign, host=HOST.replace("  hostname: llm\n", "  hostname: llm\n  adopt: true\n"))
    (change,) = ContainerStep().plan(ctx)
    assert change.diff["tags"] == (None, "llm;provision")
    assert change.diff["description"][1] == f"my notes\n{MARKER_LINE} (do not remove this line)"


def test_root_only_rules() -> None:
    assert is_root_only("dev0", "/dev/nvidia0", True)
    assert is_root_only("mp0", "/tank/models,mp=/srv/models", True)
    assert not is_root_only("mp0", "local-lvm:8,mp=/data", True)
    assert not is_root_only("features", "nesting=1", True)
    assert is_root_only("features", "nesting=1", False)
    assert is_root_only("features", "keyctl=1,nesting=1", True)
    # compared flag by flag with the current value (pve-container src/PVE/LXC.pm:1690-1726@94f5585)
    assert is_root_only("features", "nesting=1", True, "nesting=1,keyctl=1")   # removing keyctl
    assert not is_root_only("features", "nesting=0,keyctl=1", True, "nesting=1,keyctl=1")
    assert not is_root_only("features", None, True, "nesting=1")               # delete: old flags
    assert is_root_only("features", None, True, "nesting=1,fuse=1")
    assert not is_root_only("cores", "4", False)


def test_same_normalises_like_pve() -> None:
    assert same("tags", "b;a", "a;b", "9.1")
    assert same("tags", "a,b", "a;b", "8.4")
    assert not same("tags", "a", "a;b", "9.1")
    assert same("dev0", "/dev/nvidia0,gid=44", "path=/dev/nvidia0,gid=44", "9.1")
    assert not same("dev0", "/dev/nvidia0,gid=44", "/dev/nvidia0,gid=0", "9.1")
    assert same("features", "nesting=1", "nesting=1,keyctl=0", "9.1")


def test_desired_config_has_marker_tag_and_no_secrets() -> None:
    want = desired_config(ctx_for(None))
    assert want["tags"] == "llm;provision"
    assert want["net0"] == "name=eth0,bridge=vmbr0,ip=10.0.3.50/24,gw=10.0.3.1"
    assert want["mp0"] == "/tank/models,mp=/srv/models,ro=1"


def test_templates_are_picked_by_version_not_lexically() -> None:
    from provisioner.operations.container import template_version
    names = ["local:vztmpl/debian-12-standard_12.9-1_amd64.tar.zst",
             "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
             "local:vztmpl/debian-12-standard_12.2-1_amd64.tar.zst"]
    assert max(names, key=template_version).endswith("12.12-1_amd64.tar.zst")
    assert max(names) .endswith("12.9-1_amd64.tar.zst")  # what the old lexical sort picked


def test_dns_lists_compare_after_pves_normalisation() -> None:
    assert same("nameserver", "10.0.3.1 1.1.1.1", "10.0.3.1,1.1.1.1", "9.1")
    assert not same("nameserver", "10.0.3.1", "10.0.3.1 1.1.1.1", "9.1")
    assert same("searchdomain", "lan example.com", "lan;example.com", "9.1")


def test_pct_set_errors_are_read_per_key() -> None:
    """Issue 20 point 12: PVE's per-key reasons of a failed `pct set` become the error's own lines."""
    from provisioner.operations.container import pve_errors

    text = ("400 Parameter verification failed.\ndev0: unable to hotplug dev0: Device /dev/nvidia0 does not exist\n"
            "pct set <vmid> [OPTIONS]\n")
    assert pve_errors(text) == ("400 Parameter verification failed.",
                                {"dev0": "unable to hotplug dev0: Device /dev/nvidia0 does not exist"})
    assert pve_errors("unable to parse value\n")[1] == {}


def test_adopting_keeps_the_containers_own_tags() -> None:
    """Issue 20 point 16: adopting replaced the user's tags with ours; they are merged now."""
    mine = dict(CONVERGED, tags="backup;Team-A", description="my notes\n")
    ctx = ctx_for(mine, host=HOST.replace("  hostname: llm\n", "  hostname: llm\n  adopt: true\n"))
    (change,) = ContainerStep().plan(ctx)
    assert change.diff["tags"] == ("backup;Team-A", "backup;llm;provision;team-a")
    # a managed container whose tags someone extended in the UI: nothing to change
    assert plan(ctx_for(dict(CONVERGED, tags="llm;provision;gpu-box"))) == []


def test_a_pending_deletion_shows_what_goes() -> None:
    """Issue 20 point 16: a pending delete read "(none) → (none)" in the restart's diff."""
    ct = ContainerState(vmid=120, config=dict(CONVERGED), digest="d", pending={"cores": "4"},
                        pending_delete=frozenset({"mp1"}), status="running",
                        pending_was={"mp1": "/tank/x,mp=/x", "cores": "2"})
    cfg = load_text(HOST, "h.yaml").config
    ctx = PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=ct, vmid=120), facts={},
                      root_path="ssh", allow_restart=True)
    (restart,) = [c for c in ContainerStep().plan(ctx) if c.action == "restart"]
    assert restart.diff == {"cores": ("2", "4"), "mp1": ("/tank/x,mp=/x", "(deleted)")}
    assert "(none) → (none)" not in restart.render()
