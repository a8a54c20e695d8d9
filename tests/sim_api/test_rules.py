"""The PUT-config rules used directly (as ``pct set`` does): root@pam over SSH, no HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.sim.pve.conf import ConfStore, PveConf
from provisioner.sim.pve.rules import ROOT, RuleError, Update, apply_pending, normalise_tags, update_config

BASE = {"arch": "amd64", "hostname": "llm", "memory": "512", "ostype": "debian",
        "rootfs": "local-lvm:vm-120-disk-0,size=8G", "unprivileged": "1"}


def store_with(tmp_path: Path, values: dict[str, str]) -> ConfStore:
    store = ConfStore(tmp_path)
    conf = PveConf()
    conf.values.update(values)
    store.save(120, conf)
    return store


@pytest.mark.parametrize("raw, expected", [
    ("b;A;a", "a;b"), ("Zeta,alpha beta", "alpha;beta;zeta"), ("", ""), ("gpu;GPU;llm", "gpu;llm"),
])
def test_normalise_tags(raw: str, expected: str) -> None:
    assert normalise_tags(raw) == expected


def test_root_over_ssh_may_set_devices(tmp_path: Path) -> None:
    store = store_with(tmp_path, BASE)
    update_config(store, 120, Update({"dev0": "/dev/null,gid=44"}), user=ROOT, running=False, version="9.1")
    assert store.load(120).values["dev0"] == "/dev/null,gid=44"
    with pytest.raises(RuleError) as exc:
        update_config(store, 120, Update({"dev1": "/dev/null"}), user="root@pam!tok", running=False,
                      version="9.1")
    assert (exc.value.status, exc.value.message) == (
        403, "Permission check failed (configuring device passthrough is only allowed for root@pam)")


def test_hotplug_failure_is_a_parameter_error_and_nothing_is_written(tmp_path: Path) -> None:
    """PVE raises the hot-plug errors before write_config: "don't write to config if we get any
    errors" (pve-container src/PVE/API2/LXC/Config.pm:250-252@94f5585)."""
    store = store_with(tmp_path, BASE)
    before = store.path(120).read_text()

    def refuse(key: str, value: str) -> None:
        raise RuntimeError("not simulated")

    with pytest.raises(RuleError) as exc:
        update_config(store, 120, Update({"mp0": "/srv,mp=/srv", "cores": "2"}), user=ROOT,
                      running=True, version="9.1", hotplug=refuse)
    assert exc.value.status == 400
    assert exc.value.errors == {"mp0": "unable to hotplug mp0: not simulated"}
    assert store.path(120).read_text() == before


def test_apply_pending_at_start(tmp_path: Path) -> None:
    store = store_with(tmp_path, {**BASE, "swap": "512"})
    update_config(store, 120, Update({"dev0": "/dev/null", "features": "nesting=1"}, delete=["swap"]),
                  user=ROOT, running=True, version="8.4")
    pending = store.load(120).pending.values
    assert pending == {"dev0": "/dev/null", "features": "nesting=1"}  # swap deletion hot-plugged
    values = apply_pending(store, 120, "8.4")
    assert values["dev0"] == "/dev/null" and values["features"] == "nesting=1" and "swap" not in values
    assert "[pve:pending]" not in store.path(120).read_text()


def test_delete_of_an_unset_key_warns(tmp_path: Path) -> None:
    store = store_with(tmp_path, BASE)
    warnings: list[str] = []
    update_config(store, 120, Update({}, delete=["cores"]), user=ROOT, running=False, version="9.1",
                  warn=warnings.append)
    assert warnings == ["cannot delete 'cores' - not set in current configuration!"]


def test_locked_ct_refuses_changes(tmp_path: Path) -> None:
    store = store_with(tmp_path, {**BASE, "lock": "backup"})
    with pytest.raises(RuleError, match=r"CT is locked \(backup\)"):
        update_config(store, 120, Update({"cores": "2"}), user=ROOT, running=False, version="9.1")


def test_protection_guards_mount_points(tmp_path: Path) -> None:
    store = store_with(tmp_path, {**BASE, "protection": "1", "mp0": "/srv,mp=/srv"})
    with pytest.raises(RuleError, match="can't remove CT 120 drive 'mp0' - protection mode enabled"):
        update_config(store, 120, Update({}, delete=["mp0"]), user=ROOT, running=False, version="9.1")


def test_start_config_carries_raw_lxc_lines(tmp_path: Path) -> None:
    """Raw lxc.* keys (only settable by editing the file) reach the backend at start."""
    store = store_with(tmp_path, BASE)
    path = store.path(120)
    path.write_text(path.read_text() + "lxc.cgroup2.devices.allow: c 195:* rwm\n")
    values = apply_pending(store, 120, "9.1")
    assert values["lxc"] == "lxc.cgroup2.devices.allow: c 195:* rwm"


def test_net_value_gets_its_hwaddr_when_written_like_parse_lxc_network() -> None:
    """update_pct_config re-prints netN at PUT time: the pending value already has its MAC."""
    from provisioner.sim.pve.rules import prepare_value

    value = prepare_value(120, {}, "net0", "bridge=vmbr0,name=eth0,ip=dhcp", "9.1")
    assert value.startswith("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:") and value.endswith(",ip=dhcp,type=veth")
    given = prepare_value(120, {}, "net0", "bridge=vmbr0,name=eth0,hwaddr=02:00:00:00:00:01", "8.4")
    assert "hwaddr=02:00:00:00:00:01" in given
