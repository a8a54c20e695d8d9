"""The simulated Proxmox host: a private mount namespace with the fake kernel view, sshd,
the API server and the apt repository.

``python -m provisioner.sim.host.namespace run --root SIM_ROOT`` is started by ``manage.start``
under ``unshare --mount --propagation private``. Inside that namespace only:

| real path          | shows                                    |
| ---                | ---                                      |
| /etc/pve           | SIM_ROOT/etc/pve (container configs)     |
| /var/lib/lxc       | SIM_ROOT/lxc (lxcpath; `pct mount` target)|
| /var/lib/vz        | SIM_ROOT/storage/local (the dir storage `local`: template/cache, snippets) |
| /proc/devices      | SIM_ROOT/host/proc/devices               |
| /proc/driver       | SIM_ROOT/host/proc/driver                |
| /sys/module        | tmpfs of symlinks: real modules + nvidia, nvidia_uvm from SIM_ROOT/host/sys/module |
| /lib/modules       | SIM_ROOT/host/lib/modules                |
| /usr/local/sbin    | SIM_ROOT/host/bin (pct, pvesh, pveversion, nvidia-smi, nvidia-modprobe, modinfo) |
| /dev               | SIM_ROOT/host/dev: copies of the real nodes, the real pts/shm/... (rbind), plus the NVIDIA nodes |
| /usr/bin, /usr/sbin | overlays whose upper layer (SIM_ROOT/host/overlay) holds the fakes of sim/hostpkg.py: apt-get, apt-cache, apt-mark, dpkg, dpkg-query, dkms, modprobe, rmmod, update-initramfs, reboot |
| /etc/apt, /usr/share/keyrings, /etc/modprobe.d, /etc/systemd/system, /etc/modules-load.d, /var/lib/provision/host-driver, /var/lib/provision/guard | SIM_ROOT/host/... (seeded from the real ones once) |
| /var/cache/provision | $PROVISION_SIM_CACHE/host-var-cache-provision: one directory for **every** node on this machine (see ``shared_host_cache``) |

The empty mount points ``/etc/pve`` and ``/usr/lib/modules`` are created on the
real host if missing. Each node has its own /dev, so nodes never share device nodes.
sshd runs every session through ``host/bin/.ssh-session`` (ForceCommand), which
sleeps ``faults/ssh_delay_ms`` first: the SSH delay fault.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from provisioner.sim.host.nvidia import NvidiaHost, _python_tool, _write_exec
from provisioner.sim.lxc import rootfs
from provisioner.sim.repos import nvidia as aptrepo

BRIDGE_IP = "10.0.3.1"


def ssh_dir(sim_root: Path) -> Path:
    return sim_root / "ssh"


def ensure_ssh_keys(sim_root: Path, port: int) -> None:
    """Host key, client key, authorized_keys and known_hosts (once per SIM_ROOT)."""
    d = ssh_dir(sim_root)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("ssh_host_ed25519_key", "id_ed25519"):
        if not (d / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"provision-sim {name}",
                            "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    host_pub = (d / "ssh_host_ed25519_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    for f in d.iterdir():
        f.chmod(0o600 if not f.name.endswith(".pub") else 0o644)


def write_sshd_config(sim_root: Path, port: int) -> Path:
    d = ssh_dir(sim_root)
    cfg = d / "sshd_config"
    cfg.write_text(f"""# provision-sim host sshd
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/ssh_host_ed25519_key
PidFile {sim_root}/run/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers root
MaxStartups 100:30:200
MaxSessions 64
ForceCommand {sim_root}/host/bin/.ssh-session
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    return cfg


def write_host_tools(sim_root: Path, settings: dict) -> None:
    bindir = sim_root / "host" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    _write_exec(bindir / ".ssh-session", f"""#!/bin/sh
# provision-sim: every SSH session runs through here (ForceCommand) so faults can delay it.
ms=$(cat {sim_root}/faults/ssh_delay_ms 2>/dev/null || echo 0)
[ "${{ms:-0}}" -gt 0 ] 2>/dev/null && sleep "$(awk "BEGIN {{ print $ms / 1000 }}")"
if [ -e {sim_root}/run/rebooting ]; then echo "Connection closed: the host is rebooting" >&2; exit 255; fi
[ -n "$SSH_ORIGINAL_COMMAND" ] || exec "${{SHELL:-/bin/sh}}" -l
exec "${{SHELL:-/bin/sh}}" -c "$SSH_ORIGINAL_COMMAND"
""")
    _write_exec(bindir / "pct", _python_tool("provisioner.sim.cli.pct", "", sim_root))
    _write_exec(bindir / "pvesh", _python_tool("provisioner.sim.cli.pvesh", "", sim_root))
    version = settings.get("version", "9.1")
    manager = {"8.4": "8.4.1/2a5fa54a8503f96d", "9.1": "9.1.1/42db4a6cf33dac83"}.get(version, f"{version}.0/0")
    _write_exec(bindir / "pveversion", f'#!/bin/sh\necho "pve-manager/{manager} (running kernel: $(uname -r))"\n')


def _bind(src: Path, dst: str) -> None:
    subprocess.run(["mount", "--bind", str(src), dst], check=True)


def populate_dev(devdir: Path) -> list[str]:
    """Copy the real /dev's nodes and links into ``devdir``; return its sub-directories.

    Directories (pts, shm, mqueue...) are bind-mounted by ``setup_namespace``.
    NVIDIA nodes are not copied: the node's own come from sim/nvidia.py.
    """
    devdir.mkdir(parents=True, exist_ok=True)
    dirs = []
    for entry in os.scandir("/dev"):
        if entry.name.startswith("nvidia"):
            continue
        target = devdir / entry.name
        st = os.lstat(entry.path)
        if os.path.lexists(target) and not stat.S_ISDIR(os.lstat(target).st_mode):
            target.unlink()
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
            os.chown(target, st.st_uid, st.st_gid)
            os.chmod(target, stat.S_IMODE(st.st_mode))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
            dirs.append(entry.name)
    return dirs


def shadow_tools(sim_root: Path) -> None:
    """Overlay the fakes of sim/hostpkg.py over /usr/bin and /usr/sbin (inside the namespace only).

    An overlay, not bind mounts: /usr/sbin/reboot and modprobe are symlinks (to systemctl and kmod),
    and binding over a symlink would shadow its target. Checked afterwards: a node whose
    `reboot` or `apt-get` would be the real one does not start.
    """
    from provisioner.sim.host.packages import REAL_DPKG, TOOLS

    repo = Path(__file__).resolve().parents[3]
    for sub in ("bin", "sbin"):
        upper, work = sim_root / "host/overlay" / sub / "upper", sim_root / "host/overlay" / sub / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        for where, name in TOOLS:
            if where == sub:
                _write_exec(upper / name, f"#!/bin/sh\n# provision-sim: simulated host tool (sim/hostpkg.py)\n"
                                          f"PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "
                                          f"-m provisioner.sim.host.packages --root {sim_root} {name} \"$@\"\n")
        if sub == "bin" and Path("/usr/bin/dpkg").exists():
            shutil.copy2("/usr/bin/dpkg", upper / Path(REAL_DPKG).name)
        subprocess.run(["mount", "-t", "overlay", f"provision-sim-usr-{sub}", "-o",
                        f"lowerdir=/usr/{sub},upperdir={upper},workdir={work}", f"/usr/{sub}"], check=True)
    for where, name in TOOLS:
        if "provision-sim" not in Path(f"/usr/{where}/{name}").read_text(errors="replace"):
            raise RuntimeError(f"/usr/{where}/{name} is not the simulated one: refusing to run the node")


def shadow_etc(sim_root: Path) -> None:
    """The sim host's own /etc/apt, keyrings, modprobe.d, systemd units and modules-load.d (seeded once).

    What `provision` writes on a host (NVIDIA's repo, the nouveau blacklist, the boot unit,
    nvidia_uvm at boot) thus lands in the node, never in this machine's /etc, and each node
    starts from what a fresh host has.
    """
    host = sim_root / "host"
    # /var/lib/provision/host-driver: where a tool that manages the host's driver keeps its state on
    # the host (provision's does); a node of its own gets a directory of its own, as every real host has.
    for real, mine in (("/etc/apt", "etc/apt"), ("/usr/share/keyrings", "usr/share/keyrings"),
                       ("/etc/modprobe.d", "etc/modprobe.d"),
                       ("/var/lib/provision/host-driver", "var/lib/provision/host-driver"),
                       ("/var/lib/provision/guard", "var/lib/provision/guard"),
                       ("/etc/systemd/system", "etc/systemd/system"), ("/etc/modules-load.d", "etc/modules-load.d")):
        Path(real).mkdir(parents=True, exist_ok=True)
        if not (host / mine).exists():
            shutil.copytree(real, host / mine, symlinks=True)
            # a fresh host has none of what provision writes (left on this machine by older runs)
            for pattern in ("sources.list.d/cuda-*", "provision-*", "*/provision-*", "nvidia-uvm.conf"):
                for f in (host / mine).glob(pattern):
                    f.unlink()
        _bind(host / mine, real)
    # (no bind over /proc/sys/kernel/random/boot_id: a file mounted over anything in /proc makes the
    # kernel refuse a fresh proc mount in a user namespace, so unprivileged CTs would not start)


#: the host's /var/cache/provision, under the simulator's cache so that emptying /var/cache/provision-sim
#: empties it too
HOST_CACHE = rootfs.CACHE_DIR / "host-var-cache-provision"


def shared_host_cache() -> None:
    """/var/cache/provision of the node is one directory shared by every simulated node on this machine.

    Unlike /etc/apt or /var/lib/provision/host-driver (a directory per node), this one deliberately
    stands for *the same host*: every simulated node here runs on this machine's CPU, kernel and disk,
    which is what a real host's cache (what a tool keeps there, e.g. finished builds) is keyed by.
    So a build kept by one node's container is found by a container of the next node, as a
    re-created container finds it on a real host. It lives under the simulator's cache directory.
    """
    HOST_CACHE.mkdir(parents=True, exist_ok=True)
    Path("/var/cache/provision").mkdir(parents=True, exist_ok=True)
    _bind(HOST_CACHE, "/var/cache/provision")


def setup_namespace(sim_root: Path) -> None:
    """Bind the fake host view over the real paths (call only inside the private namespace)."""
    host = sim_root / "host"
    for sub in populate_dev(host / "dev"):
        subprocess.run(["mount", "--rbind", f"/dev/{sub}", str(host / "dev" / sub)], check=True)
    subprocess.run(["mount", "--rbind", str(host / "dev"), "/dev"], check=True)
    for mp in ("/etc/pve", "/usr/lib/modules"):
        Path(mp).mkdir(parents=True, exist_ok=True)
    (sim_root / "etc/pve/lxc").mkdir(parents=True, exist_ok=True)
    _bind(sim_root / "etc/pve", "/etc/pve")
    _bind(sim_root / "lxc", "/var/lib/lxc")
    # the dir storage ``local`` is /var/lib/vz on PVE (templates, snippets: sim/pve/hookscript.py)
    Path("/var/lib/vz").mkdir(parents=True, exist_ok=True)
    (sim_root / "storage/local/snippets").mkdir(parents=True, exist_ok=True)
    _bind(sim_root / "storage/local", "/var/lib/vz")
    _bind(host / "proc/devices", "/proc/devices")
    _bind(host / "proc/driver", "/proc/driver")
    _bind(host / "lib/modules", "/usr/lib/modules")
    _bind(host / "bin", "/usr/local/sbin")
    real = sim_root / "run" / "real-sys-module"
    real.mkdir(parents=True, exist_ok=True)
    _bind(Path("/sys/module"), str(real))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "sim-sys-module", "/sys/module"], check=True)
    for entry in os.listdir(real):
        os.symlink(real / entry, f"/sys/module/{entry}")
    for mod in ("nvidia", "nvidia_uvm"):
        if not os.path.lexists(f"/sys/module/{mod}"):
            os.symlink(host / "sys/module" / mod, f"/sys/module/{mod}")
    shadow_etc(sim_root)
    shared_host_cache()
    shadow_tools(sim_root)


def hostpkg_seed(sim_root: Path) -> None:
    """First start: the packages of the driver the node starts with (as installed from NVIDIA's repo)."""
    from provisioner.sim.host.packages import DEBIAN_DKMS, Host

    h = Host(sim_root)
    if (h.dir / "status.json").exists():
        return
    st = h.nv.load()
    status = {f"proxmox-kernel-{k}-signed": {"version": k.removesuffix("-pve"), "state": "ii", "held": False}
              for k in h.kernels()}
    dkms: dict[str, dict[str, str]] = {}
    if st.installed:
        from provisioner.sim.repos.nvidia_graph import closure

        # what `apt-get install nvidia-driver-cuda nvidia-kernel-open-dkms` from NVIDIA's repository leaves
        for name, version in closure(["nvidia-driver-cuda", "nvidia-kernel-open-dkms"], st.installed).items():
            status[name] = {"version": version, "state": "ii", "held": False}
        status["dkms"] = {"version": DEBIAN_DKMS, "state": "ii", "held": False}
        status[f"proxmox-headers-{st.running_kernel}"] = {"version": st.running_kernel.removesuffix("-pve"),
                                                          "state": "ii", "held": False}
        dkms[st.installed] = {st.running_kernel: "installed"}
        if st.newer_kernel and st.newer_kernel_has_module:
            dkms[st.installed][st.newer_kernel] = "installed"
    h.set_status(status)
    h._save("dkms.json", dkms)


class HostProcess:
    """The long-running process that owns the namespace and the node's services."""

    def __init__(self, sim_root: Path) -> None:
        self.sim_root = sim_root
        self.settings = json.loads((sim_root / "sim.json").read_text())
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self) -> None:
        root = self.sim_root
        os.environ["PROVISION_SIM_NS"] = str(root)
        (root / "run").mkdir(exist_ok=True)
        (root / "faults").mkdir(exist_ok=True)
        write_host_tools(root, self.settings)
        setup_namespace(root)
        NvidiaHost(root).refresh()
        hostpkg_seed(root)
        apt_port = int(self.settings["apt_port"])
        aptrepo.build(root / "apt-repo", f"http://{BRIDGE_IP}:{apt_port}")
        self.apt = aptrepo.serve(root / "apt-repo", BRIDGE_IP, apt_port)
        Path("/run/sshd").mkdir(exist_ok=True)
        cfg = write_sshd_config(root, int(self.settings["ssh_port"]))
        log = open(root / "log" / "sshd.log", "ab")  # noqa: SIM115 - the child keeps it
        self.children["sshd"] = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                                 stdout=log, stderr=log)
        if os.environ.get("PROVISION_SIM_NO_API") != "1":
            log = open(root / "log" / "api.log", "ab")  # noqa: SIM115 - the child keeps it
            self.children["api"] = subprocess.Popen(
                [sys.executable, "-m", "provisioner.sim.api.server", "--root", str(root)],
                stdout=log, stderr=log)
        (root / "run" / "host.ready").write_text(json.dumps(
            {name: p.pid for name, p in self.children.items()}))

    def stop(self, *_: object) -> None:
        self.stopping = True

    def _apt_fault(self) -> None:
        """``faults/apt_stopped`` (Faults.stop_apt_server): the repository's server is down
        (connection refused), until the file is removed."""
        down = (self.sim_root / "faults" / "apt_stopped").exists()
        if down and self.apt is not None:
            self.apt.shutdown()
            self.apt.server_close()
            self.apt = None
        elif not down and self.apt is None:
            self.apt = aptrepo.serve(self.sim_root / "apt-repo", BRIDGE_IP, int(self.settings["apt_port"]))

    def wait(self) -> int:
        """Run until SIGTERM or until a service dies; then stop everything."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        rc = 0
        while not self.stopping:
            self._apt_fault()
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    print(f"provision-sim: {name} exited with {proc.returncode}", file=sys.stderr)
                    self.stopping, rc = True, 1
            time.sleep(0.3)
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.apt is not None:
            self.apt.shutdown()
        (self.sim_root / "run" / "host.ready").unlink(missing_ok=True)
        return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="provision-sim-host")
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("--root", required=True, type=Path)
    args = ap.parse_args(argv)
    proc = HostProcess(args.root.resolve())
    try:
        proc.start()
    except Exception:
        for child in proc.children.values():
            child.kill()
        raise
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
