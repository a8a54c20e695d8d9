"""Host and container checks on recorded facts."""

from __future__ import annotations

from provisioner.doctor import checks_container as cc
from provisioner.doctor import checks_host as ch
from provisioner.doctor.fixes import plan_fixes

from .recorded_ctx import VMID, config, context, one, raw


def test_recorded_host_is_healthy():
    d = context()
    for check in ch.CHECKS + cc.CHECKS:
        for f in check(d):
            assert f.status == "ok", (f.id, f.title)
            assert f.evidence is not None and f.evidence.command


def test_driver_not_loaded():
    d = context(raw={"nvidia.driver": "sys=\nproc="})
    f = one(ch.check_driver_loaded(d), "host.driver_loaded")
    assert f.status == "fail" and "no NVIDIA kernel module" in f.title and "modprobe nvidia" in f.fix
    assert ch.check_device_nodes(d) == [] and ch.check_boot_unit(d) == []


def test_gpu_disabled_skips_host_checks():
    d = context(cfg=config(gpu={"enabled": False}))
    assert all(check(d) == [] for check in ch.CHECKS)


def test_upgrade_trap_newer_kernel_without_module():
    d = context(raw={"kernel.modules": raw("kernel.modules") + "\nkernel 6.99.1-1-pve \n"})
    f = one(ch.check_kernel_modules(d), "host.kernel_modules")
    assert f.status == "warn" and "6.99.1-1-pve" in f.title
    assert f.fix.startswith("on the host: apt install proxmox-headers-6.99.1-1-pve && dkms autoinstall -k 6.99.1-1-pve")
    assert "kernel 6.99.1-1-pve" in f.evidence.output


def test_running_kernel_without_module():
    d = context(raw={"kernel.modules": "running 6.8.12-4-pve\nkernel 6.8.12-4-pve \n"})
    f = one(ch.check_kernel_modules(d), "host.kernel_modules")
    assert f.status == "warn" and "running kernel 6.8.12-4-pve" in f.title


def test_uvm_nodes_missing_is_fixable_by_the_gpu_host_step():
    text = "\n".join(ln for ln in raw("nvidia.devices").splitlines() if "uvm" not in ln)
    d = context(raw={"nvidia.devices": text})
    f = one(ch.check_device_nodes(d), "host.device_nodes")
    assert f.status == "fail" and f.fixable and "/dev/nvidia-uvm, /dev/nvidia-uvm-tools" in f.title
    assert "nvidia-modprobe -u -c=0" in f.fix and "Device /dev/nvidia-uvm does not exist" in f.detail
    fixes = plan_fixes(d, [f])
    assert [x.findings for x in fixes] == [["host.device_nodes"]]
    assert "load nvidia_uvm" in fixes[0].summary


def test_gpu_node_missing_is_not_fixable():
    text = "\n".join(ln for ln in raw("nvidia.devices").splitlines() if "nvidiactl" not in ln)
    f = one(ch.check_device_nodes(context(raw={"nvidia.devices": text})), "host.device_nodes")
    assert f.status == "fail" and not f.fixable and "dmesg" in f.fix


def test_boot_unit_missing():
    text = raw("nvidia.boot").replace("enabled=1", "enabled=0").replace("unit=1456", "unit=0000")
    d = context(raw={"nvidia.boot": text})
    f = one(ch.check_boot_unit(d), "host.boot_unit")
    assert f.status == "warn" and f.fixable
    assert [x.summary.split(" (")[0] for x in plan_fixes(d, [f])] == [
        "gpu.host: boot unit provision-nvidia-uvm.service"]


def test_boot_fix_off_without_modules_load():
    text = raw("nvidia.boot").replace("uvm_at_boot=1", "uvm_at_boot=0")
    f = one(ch.check_boot_unit(context(cfg=config(gpu={"boot_fix": False}), raw={"nvidia.boot": text})),
            "host.boot_unit")
    assert f.status == "warn" and not f.fixable and "gpu.boot_fix: true" in f.fix


def test_container_missing_and_stopped():
    f = one(cc.check_exists(context(ct=False)), "container.exists")
    assert f.status == "fail" and "provision up" in f.fix
    d = context(status="stopped")
    f = one(cc.check_exists(d), "container.running")
    assert f.status == "fail" and f"pct start {VMID}" in f.fix and not f.fixable
    assert cc.check_node_access(d) == []


def test_devn_removed_by_hand_gives_the_exact_pct_set():
    d = context(drop_keys=("dev2",))
    f = one(cc.check_devices(d), "container.devices")
    assert f.status == "fail" and f.fixable and "/dev/nvidia-uvm" in f.title
    assert f"pct set {VMID} --dev2 /dev/nvidia-uvm,uid=0,gid=59999,mode=0660" in f.fix
    fixes = plan_fixes(d, [f])
    assert [x.summary for x in fixes] == ["pct set --dev2 /dev/nvidia-uvm,uid=0,gid=59999,mode=0660"]


def test_devn_delete_pending_counts_as_removed():
    f = one(cc.check_devices(context(pending_delete=frozenset({"dev3"}))), "container.devices")
    assert f.status == "fail" and "/dev/nvidia-uvm-tools" in f.title


def test_devn_pointing_at_a_missing_host_node():
    text = "\n".join(ln for ln in raw("nvidia.devices").splitlines() if "uvm" not in ln)
    fs = cc.check_devices(context(raw={"nvidia.devices": text}))
    f = [x for x in fs if "missing on the host" in x.title][0]
    # vm_start stats every devN first (pve-container src/PVE/LXC/Tools.pm:157-167@94f5585)
    assert f.status == "fail" and "Device /dev/nvidia-uvm does not exist" in f.detail


def test_extra_devn_is_a_warning():
    f = one(cc.check_devices(context(config_keys={"dev4": "/dev/nvidia-modeset,uid=0,gid=0"})), "container.devices")
    assert f.status == "warn" and "/dev/nvidia-modeset" in f.title


def test_pending_changes():
    f = one(cc.check_pending(context(pending={"dev4": "/dev/nvidia1"})), "container.pending")
    assert f.status == "warn" and "dev4" in f.title and "--restart" in f.fix


def test_stale_uvm_major_in_the_container():
    text = raw("doctor.ct_nodes").replace("node /dev/nvidia-uvm 0 0 666 f4 0", "node /dev/nvidia-uvm 0 0 666 ef 0")
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": text})), "container.node_access")
    assert f.status == "fail" and "major:minor differs" in f.title and f"pct reboot {VMID}" in f.fix


def test_node_not_usable_by_the_service_user():
    text = raw("doctor.ct_nodes").replace("node /dev/nvidia0 0 0 666", "node /dev/nvidia0 0 0 660")
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": text})), "container.node_access")
    assert f.status == "fail" and "cannot open /dev/nvidia0" in f.title and "gid=59999,mode=0660" in f.fix


def test_node_0660_of_the_gpu_group_is_usable_by_its_member():
    """Our scheme (gpu_access.py): 0660, gid 59999, llama in that group."""
    text = raw("doctor.ct_nodes").replace(" 0 0 666", " 0 59999 660")
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("groups")) + "\ngroups 998 59999\n"
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": text})), "container.node_access")
    assert f.status == "ok"
    no_member = text.replace("groups 998 59999", "groups 998")
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": no_member})), "container.node_access")
    assert f.status == "fail"


def test_nodes_owned_by_nobody_in_an_unprivileged_ct():
    text = raw("doctor.ct_nodes").replace(" 0 0 666", " 65534 65534 666")
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": text}, config_keys={"unprivileged": "1"})),
            "container.node_access")
    assert f.status == "warn" and "nobody" in f.title


def test_node_missing_inside():
    text = "\n".join(ln for ln in raw("doctor.ct_nodes").splitlines() if "nvidiactl" not in ln)
    f = one(cc.check_node_access(context(raw={"doctor.ct_nodes": text})), "container.node_access")
    assert f.status == "fail" and "missing in the container: /dev/nvidiactl" in f.title


def test_pct_exec_gave_nothing_back():
    d = context()
    d.plan.facts = {k: v for k, v in d.plan.facts.items() if k.startswith(("nvidia.", "kernel.", "doctor.vram",
                                                                          "doctor.host"))}
    f = one(cc.check_exec(d), "container.exec")
    assert f.status == "fail" and f"pct exec {VMID} -- true" in f.fix
    assert cc.check_exec(context()) == []


def test_fix_leaves_an_unmarked_container_alone():
    """Issue 20 point 3: --fix added dev0-dev3 to a container we did not create."""
    from provisioner.doctor.fixes import withheld

    foreign = {"tags": "team-a", "description": "my own container"}
    d = context(drop_keys=("dev2",), config_keys=foreign)
    f = one(cc.check_devices(d), "container.devices")
    assert f.status == "fail"
    assert plan_fixes(d, [f]) == []
    reason = withheld(d, [f])
    assert reason and f"CT {VMID} was not created by provision" in reason and "container.adopt: true" in reason
    # host-side fixes are not the container's: still offered
    text = "\n".join(ln for ln in raw("nvidia.devices").splitlines() if "uvm" not in ln)
    d = context(raw={"nvidia.devices": text}, config_keys=foreign)
    host = one(ch.check_device_nodes(d), "host.device_nodes")
    assert [x.findings for x in plan_fixes(d, [host])] == [["host.device_nodes"]]
    # adopt: true is the user's word that it may be changed, as for `up`
    d = context(cfg=config(container={"adopt": True}), drop_keys=("dev2",), config_keys=foreign)
    assert [x.summary for x in plan_fixes(d, [f])] == ["pct set --dev2 /dev/nvidia-uvm,uid=0,gid=59999,mode=0660"]
    assert withheld(d, [f]) is None


def test_a_gpu_shared_by_a_later_container_is_a_warning_not_a_lockout():
    """Issue 20 point 10: doctor failed (container.gpu_exclusive) for the GPU's first holder."""
    claims = "\n".join(["201 #managed-by%3A provision (do not remove this line)", "201 tags: provision",
                        "201 hostname: llm-b", "201 dev0: /dev/nvidia0,uid=0,gid=0"])
    d = context(raw={"pve.gpu_claims": claims})
    found = [f for f in cc.check_devices(d) if f.id == "container.gpu_exclusive"]
    assert [(f.status, f.title) for f in found] == [
        ("warn", "/dev/nvidia0 is shared with CT 201 (llm-b), which asked for it (gpu.share: true)")]
    assert one(cc.check_devices(d), "container.devices").status == "ok"
