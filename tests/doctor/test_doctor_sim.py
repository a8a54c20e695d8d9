"""doctor on the simulated node: each fault injected for real, reported with the right fix,
and cleared by `doctor --fix` where the fix is safe."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from provisioner.cli.main import app
from provisioner.sim import assets
from provisioner.sim.pve.conf import ConfStore

from . import simenv

pytestmark = pytest.mark.sim

VMID = 762
OTHER = 763


@pytest.fixture(scope="module")
def env(sim_node, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("doctor")
    loaded = simenv.host_file(tmp, sim_node.conn, VMID)
    simenv.converge(loaded)
    reattach_modules_view(sim_node)
    yield loaded
    sim_node.destroy_ct(VMID)
    sim_node.faults.upgrade_host_driver("580.95.05")


def reattach_modules_view(sim_node) -> None:
    """Work around a simulator bug: NvidiaHost.refresh() (run by nvidia-modprobe -u and the driver
    faults) rmtree's SIM_ROOT/host/lib/modules, detaching the sim host's bind mount of it on
    /usr/lib/modules, so the host then shows no kernel modules at all. Bind it again."""
    rc, _, err = sim_node.run(f"umount -l /usr/lib/modules; mount --bind {sim_node.sim_root}/host/lib/modules "
                              "/usr/lib/modules")
    assert rc == 0, err


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def doctor_json(loaded, *extra: str) -> tuple[int, dict]:
    code, out = cli("--json", "doctor", str(loaded.path), *extra)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, out
    return code, json.loads(lines[-1])


def finding(data: dict, fid: str) -> dict:
    found = [f for f in data["findings"] if f["id"] == fid]
    assert found, f"no finding {fid}: {[f['id'] for f in data['findings']]}"
    return max(found, key=lambda f: {"ok": 0, "warn": 1, "fail": 2}[f["status"]])


def test_healthy_container_is_all_ok_but_the_missing_build(env):
    report = simenv.doctor(env)
    st = simenv.statuses(report)
    assert {k: v for k, v in st.items() if v != "ok"} == {"cuda.links": "fail"}, st  # no llama build in this env
    assert report.ssh_round_trips == 1 and report.api_calls <= 5
    assert report.seconds < 10


def test_newer_kernel_without_module(env, sim_node):
    # A kernel installed next to the running one, without an NVIDIA module (DKMS did not build).
    # Made by hand: the sim's set_newer_kernel fault rewrites /lib/modules by rmtree (see
    # reattach_modules_view).
    kver = "6.99.1-1-pve"
    reattach_modules_view(sim_node)
    rc, _, err = sim_node.run(f"mkdir -p /lib/modules/{kver}/kernel/drivers/video")
    assert rc == 0, err
    # installed = a kernel package (a bare /lib/modules directory is a removed kernel's leftover)
    from provisioner.sim.host.packages import Host
    pkgs = Host(sim_node.sim_root)
    status = pkgs.status
    status[f"proxmox-kernel-{kver}-signed"] = {"version": "6.99.1-1", "state": "ii", "held": False}
    pkgs.set_status(status)
    try:
        code, data = doctor_json(env)
        f = finding(data, "host.kernel_modules")
        assert f["status"] == "warn" and kver in f["title"], f
        assert f"proxmox-headers-{kver}" in f["fix"] and f"dkms autoinstall -k {kver}" in f["fix"]
        assert "the GPU is gone" in f["detail"]
    finally:
        sim_node.run(f"rm -rf /lib/modules/{kver}")
        status = pkgs.status
        status.pop(f"proxmox-kernel-{kver}-signed", None)
        pkgs.set_status(status)


def test_driver_upgraded_on_the_host(env, sim_node):
    sim_node.faults.upgrade_host_driver("580.105.08")
    code, data = doctor_json(env)
    f = finding(data, "driver.userspace")
    assert code == 1 and f["status"] == "fail" and f["fixable"]
    assert "580.105.08" in f["title"] and "580.95.05" in f["title"]
    assert "Failed to initialize NVML: Driver/library version mismatch" in f["evidence"]["output"]
    assert "kernel module is 580.105.08" in f["detail"] and "must be the same release" in f["detail"]
    assert "re-pin to 580.105.08" in f["fix"]
    code, data = doctor_json(env, "--fix", "--yes")
    assert finding(data, "driver.userspace")["status"] == "ok"
    assert finding(data, "driver.pins")["status"] == "ok"
    assert "driver.userspace" in data["fixed"]


def test_uvm_node_missing(env, sim_node):
    sim_node.faults.drop_uvm()
    code, data = doctor_json(env)
    f = finding(data, "host.device_nodes")
    assert code == 1 and f["status"] == "fail" and f["fixable"]
    assert "/dev/nvidia-uvm" in f["title"] and "nvidia-modprobe -u -c=0" in f["fix"]
    code, data = doctor_json(env, "--fix", "--yes")
    assert finding(data, "host.device_nodes")["status"] == "ok"
    rc, _, _ = sim_node.run("test -c /dev/nvidia-uvm && test -c /dev/nvidia-uvm-tools")
    assert rc == 0


def _rootfs_resolv(sim_node) -> str:
    conf = ConfStore(sim_node.sim_root).load(VMID).values
    return str(sim_node.backend.rootfs_path(VMID, conf) / "etc" / "resolv.conf")


def test_immutable_resolv_conf(env, sim_node):
    path = _rootfs_resolv(sim_node)
    subprocess.run(["chattr", "+i", path], check=True)
    try:
        code, data = doctor_json(env)
        f = finding(data, "dns.immutable")
        assert code == 1 and f["status"] == "fail" and f["fixable"]
        assert "does not start" in f["detail"] and ".pve-ignore.resolv.conf" in f["fix"]
        code, data = doctor_json(env, "--fix", "--yes")
        assert finding(data, "dns.immutable")["status"] == "ok"
        assert "i" not in subprocess.run(["lsattr", "-d", path], capture_output=True, text=True).stdout.split()[0]
    finally:
        subprocess.run(["chattr", "-i", path], check=False)


def test_devn_removed_by_hand(env, sim_node):
    rc, _, err = sim_node.run(f"pct set {VMID} --delete dev2")
    assert rc == 0, err
    code, data = doctor_json(env)
    f = finding(data, "container.devices")
    assert code == 1 and f["status"] == "fail" and f["fixable"]
    assert "/dev/nvidia-uvm" in f["title"] and f"pct set {VMID} --dev" in f["fix"]
    code, data = doctor_json(env, "--fix", "--yes")
    assert finding(data, "container.devices")["status"] == "ok"
    rc, out, _ = sim_node.run(f"pct config {VMID}")
    assert "/dev/nvidia-uvm,uid=0,gid=59999,mode=0660" in out


def test_dkms_package_in_the_container(env, sim_node):
    rc, out, err = sim_node.run(f"pct exec {VMID} -- sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                                "--no-install-recommends nvidia-kernel-open-dkms'", timeout=300)
    assert rc == 0, out[-1500:] + err[-1500:]
    code, data = doctor_json(env)
    f = finding(data, "driver.no_kernel_packages")
    assert code == 1 and f["status"] == "fail" and not f["fixable"]
    assert "dkms" in f["title"] and "nvidia-kernel-open-dkms" in f["title"]
    assert f["fix"].startswith(f"pct exec {VMID} -- apt-get purge -y dkms nvidia-kernel-open-dkms")
    # the fix as written works
    rc, _, err = sim_node.run(f["fix"].split(" (")[0], timeout=300)
    assert rc == 0, err
    _, data = doctor_json(env)
    assert finding(data, "driver.no_kernel_packages")["status"] == "ok"


def test_vmid_option_checks_another_container(env, sim_node):
    sim_node.create_ct(OTHER, dev0="/dev/nvidia0")
    try:
        rc, _, err = sim_node.run(f"pct start {OTHER}")
        assert rc == 0, err
        code, data = doctor_json(env, "--vmid", str(OTHER))
        assert finding(data, "container.running")["title"] == f"CT {OTHER} is running"
        f = finding(data, "container.devices")
        assert f["status"] == "fail" and "/dev/nvidiactl" in f["title"]
        # the managed container of this host file holds GPU 0 too: said, and not "fixed" by sharing it
        g = finding(data, "container.gpu_exclusive")
        assert g["status"] == "fail" and "is already passed to CT" in g["title"] and "gpu.share" in g["fix"], g
        assert not f["fixable"]
        assert finding(data, "driver.userspace")["status"] == "fail"  # no userspace installed there
    finally:
        sim_node.destroy_ct(OTHER)


def test_unknown_host_key_and_bad_token(env, tmp_path, sim_node):
    text = env.path.read_text()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    bad_secret = tmp_path / "secret"
    bad_secret.write_text("00000000-0000-0000-0000-000000000000\n")
    bad_secret.chmod(0o600)
    text = text.replace(str(sim_node.known_hosts), str(empty))
    text = text.replace(sim_node.conn["api"]["token_secret_file"], str(bad_secret))
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out = cli("--json", "doctor", str(path))
    data = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert code == 1
    ssh = finding(data, "access.ssh")
    assert ssh["status"] == "fail" and "not known" in ssh["title"] and "ssh-keyscan" in ssh["fix"]
    api = finding(data, "access.api")
    assert api["status"] == "fail"
    assert finding(data, "access.root_path")["status"] == "fail"
    assert bad_secret.read_text().strip() not in out


def test_context_too_small_for_claude_code(env, sim_node, tmp_path):
    # The host file's ctx_size passes validation (32768), but SmolLM2 is trained for 8K and
    # llama-server caps each slot to that; and 4 slots share the context. Doctor sees both.
    source = assets.smollm2_model()
    rc, _, err = sim_node.run(f"pct exec {VMID} -- mkdir -p /srv/models && "
                              f"pct push {VMID} {source} /srv/models/{source.name} --perms 0644")
    assert rc == 0, err
    model = {"path": str(source), "location": "container"}
    capped = simenv.host_file(tmp_path, sim_node.conn, VMID, model=model, server={"ctx_size": 32768})
    code, data = doctor_json(capped)
    f = finding(data, "services.context")
    assert code == 1 and f["status"] == "fail", f
    assert "8192" in f["title"] and "training context" in f["evidence"]["output"]
    assert "server.override_kv: ['llama.context_length=int:32768']" in f["fix"]  # read from the GGUF header
    assert finding(data, "services.model_file")["status"] == "ok"
    vram = finding(data, "services.vram")
    assert vram["status"] == "ok" and "KV cache" in vram["evidence"]["output"]

    lifted = {"ctx_size": 32768, "override_kv": ["llama.context_length=int:32768"]}
    shared = simenv.host_file(tmp_path, sim_node.conn, VMID, model=model, server={**lifted, "parallel": 4})
    _, data = doctor_json(shared)
    f = finding(data, "services.context")
    assert f["status"] == "fail" and "8192" in f["title"] and "set server.ctx_size: 131072" in f["fix"]

    ok_file = simenv.host_file(tmp_path, sim_node.conn, VMID, model=model, server=lifted)
    _, data = doctor_json(ok_file)
    assert finding(data, "services.context")["status"] == "ok"


def test_root_path_with_a_root_pam_password(env, sim_node, tmp_path):
    loaded = simenv.host_file(tmp_path, sim_node.conn, VMID, auth="password")
    _, data = doctor_json(loaded)
    f = finding(data, "access.root_path")
    assert f["status"] == "ok" and "through the API as root@pam" in f["title"]
    assert finding(data, "access.api")["status"] == "ok"
    assert sim_node.root_password not in json.dumps(data)
