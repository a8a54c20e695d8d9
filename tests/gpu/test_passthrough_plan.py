"""devN entries and the host boot step, planned from facts."""

from __future__ import annotations

import pytest

from provisioner.errors import ConfigError
from provisioner.facts.nvidia import BOOT_UNIT_PATH, MODULES_CONF_PATH, BootSetup
from provisioner.operations.container import ContainerStep
from provisioner.operations.passthrough import (GpuHostStep, boot_files, device_keys, enable_script,
                                                number_devices, select_gpus)

from .planctx import RTX4090, RTX5090, ctx, host_facts

#: PVE makes the nodes 0660 root:root without mode/gid (pve-container src/PVE/LXC.pm:1906@94f5585)
OPT = "uid=0,gid=59999,mode=0660"
WANT = {"dev0": f"/dev/nvidia0,{OPT}", "dev1": f"/dev/nvidiactl,{OPT}",
        "dev2": f"/dev/nvidia-uvm,{OPT}", "dev3": f"/dev/nvidia-uvm-tools,{OPT}"}


def test_fresh_container_gets_four_entries() -> None:
    assert device_keys(ctx(host_facts())).desired == WANT


def test_existing_entries_keep_their_index_and_foreign_dev_is_kept() -> None:
    current = {"dev0": "/dev/dri/renderD128,gid=104", "dev3": "/dev/nvidia0,gid=0,uid=0",
               "dev5": "/dev/nvidia-uvm,uid=0,gid=0"}
    out = number_devices(["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"], current)
    assert out == {"dev3": f"/dev/nvidia0,{OPT}", "dev5": f"/dev/nvidia-uvm,{OPT}",
                   "dev1": f"/dev/nvidiactl,{OPT}", "dev2": f"/dev/nvidia-uvm-tools,{OPT}"}


def test_converged_devices_plan_no_container_change() -> None:
    c = ctx(host_facts(), config={**WANT, "cores": "4", "memory": "16384", "swap": "512", "onboot": "1",
                                  "net0": "name=eth0,bridge=vmbr0,ip=dhcp,type=veth", "features": "nesting=1",
                                  # the host guard's hookscript (driver.follow_host: sync by default)
                                  "hookscript": "local:snippets/provision-guard"})
    assert ContainerStep().plan(c) == []


def test_stale_entry_is_removed_and_missing_added() -> None:
    c = ctx(host_facts(), config={**WANT, "dev1": "/dev/nvidia1,uid=0,gid=0", "dev4": "/dev/nvidia-modeset"})
    changes = [ch for ch in ContainerStep().plan(c) if ch.action == "update"]
    assert len(changes) == 1
    diff = changes[0].diff
    assert diff["dev1"] == ("/dev/nvidia1,uid=0,gid=0", f"/dev/nvidiactl,{OPT}")
    assert diff["dev4"] == ("/dev/nvidia-modeset", None)


def test_gpu_disabled_removes_our_entries_only() -> None:
    c = ctx(host_facts(), extra="gpu: {enabled: false}\n", config={**WANT, "dev4": "/dev/dri/card0"})
    diff = [ch for ch in ContainerStep().plan(c) if ch.action == "update"][0].diff
    assert sorted(k for k, (_, after) in diff.items() if after is None) == ["dev0", "dev1", "dev2", "dev3"]


def test_modeset_and_caps_when_configured() -> None:
    paths = list(device_keys(ctx(host_facts(), extra="gpu: {modeset: true, caps: true}\n")).desired.values())
    assert paths[-2:] == [f"/dev/nvidia-modeset,{OPT}", f"/dev/nvidia-caps/nvidia-cap1,{OPT}"]


def test_old_entries_without_mode_are_updated() -> None:
    """devN written by earlier versions (uid=0,gid=0, no mode) give 0660 root:root nodes llama
    cannot open: they are rewritten (and, on a running CT, pending until a restart)."""
    old = {k: v.split(",")[0] + ",uid=0,gid=0" for k, v in WANT.items()}
    c = ctx(host_facts(), config={**old, "cores": "4", "memory": "16384", "swap": "512", "onboot": "1",
                                  "net0": "name=eth0,bridge=vmbr0,ip=dhcp,type=veth", "features": "nesting=1",
                                  "hookscript": "local:snippets/provision-guard"})
    (update,) = [ch for ch in ContainerStep().plan(c) if ch.action == "update"]
    assert sorted(update.diff) == ["dev0", "dev1", "dev2", "dev3"]


def test_select_by_index_bus_and_name() -> None:
    gpus = [RTX4090, RTX5090]
    assert select_gpus(gpus, [1]) == [RTX5090]
    assert select_gpus(gpus, ["01:00.0"]) == [RTX4090]
    assert select_gpus(gpus, ["0000:02:00.0"]) == [RTX5090]
    assert select_gpus(gpus, ["5090", "4090"]) == [RTX4090, RTX5090]
    assert select_gpus(gpus, "all") == gpus


def test_select_nothing_matches() -> None:
    with pytest.raises(ConfigError) as e:
        select_gpus([RTX4090], ["A100"])
    assert str(e.value) == ("gpu.select: no GPU matches 'A100' (GPUs on the host: 0: NVIDIA GeForce RTX 4090 "
                            "(01:00.0))\n  fix: use an index, a PCI bus id like 01:00.0, a part of the model "
                            "name, or 'all'")


def test_host_step_installs_unit_and_creates_missing_uvm_nodes() -> None:
    changes = GpuHostStep().plan(ctx(host_facts(uvm=False)))
    assert [(c.action, c.summary.split(" (")[0]) for c in changes] == [
        ("write", "boot unit provision-nvidia-uvm.service"),
        ("create", "load nvidia_uvm and create /dev/nvidia-uvm, /dev/nvidia-uvm-tools")]
    assert changes[1].refresh


def test_host_step_converged() -> None:
    import hashlib
    files = boot_files("/usr/bin/nvidia-modprobe")
    sha = {p: hashlib.sha256(t.encode()).hexdigest() for p, t in files.items()}
    boot = BootSetup(True, True, True, sha[BOOT_UNIT_PATH], sha[MODULES_CONF_PATH], True, "/usr/bin/nvidia-modprobe")
    assert GpuHostStep().plan(ctx(host_facts(boot=boot))) == []
    assert "ExecStart=/usr/bin/nvidia-modprobe -u -c=0" in files[BOOT_UNIT_PATH]
    assert "Before=pve-guests.service" in files[BOOT_UNIT_PATH]


def test_boot_fix_off_only_warns() -> None:
    c = ctx(host_facts(), extra="gpu: {boot_fix: false}\n")
    assert GpuHostStep().plan(c) == []
    assert any("gpu.boot_fix is off" in n for n in c.notes)


def test_enable_without_systemd_makes_the_wants_symlink() -> None:
    assert enable_script(False) == (
        "mkdir -p \"$(dirname /etc/systemd/system/multi-user.target.wants/provision-nvidia-uvm.service)\" && "
        "ln -sfn /etc/systemd/system/provision-nvidia-uvm.service "
        "/etc/systemd/system/multi-user.target.wants/provision-nvidia-uvm.service")
    assert enable_script(True) == "systemctl daemon-reload && systemctl enable provision-nvidia-uvm.service"


def test_without_gpu_facts_our_entries_are_kept() -> None:
    """`up --only container` gathers no GPU facts: that must not delete the devN entries."""
    c = ctx({}, config=dict(WANT))
    assert device_keys(c).desired == WANT
