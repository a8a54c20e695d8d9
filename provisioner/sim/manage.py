"""Start, stop and inspect a simulated Proxmox node (``provision sim start|stop|status``).

``start`` prepares SIM_ROOT (settings, secrets, TLS, SSH keys, the NVIDIA view),
makes sure the LXC bridge is up, and launches ``provisioner.sim.host.namespace`` in a
private mount namespace, in the background. It is idempotent: a running node
is left as it is. ``stop`` removes every container, mount, device node and
process of the node, and (unless ``keep_state``) SIM_ROOT itself.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ProvisionError
from provisioner.sim.api import tls
from provisioner.sim.host.namespace import BRIDGE_IP, ensure_ssh_keys
from provisioner.sim.host.nvidia import Gpu, NvidiaHost, NvidiaState
from provisioner.sim.lxc import rootfs
from provisioner.sim.lxc.backend import LxcBackend
from provisioner.sim.pve import cluster as sim_cluster

BASE = Path(os.environ.get("PROVISION_SIM_BASE", "/var/lib/provision-sim"))
TOKEN_ID = "root@pam!provision"
#: a privilege-separated token with only the README's minimal role (`pveum user token add
#: provision@pve provision` + `pveum acl modify / --tokens ... --roles Provision`)
RESTRICTED_TOKEN_ID = "provision@pve!provision"
RESTRICTED_ROLE = "Provision"
#: the README's minimal role for an unprivileged CT (a privileged one on PVE 9 also needs Sys.Modify on /)
RESTRICTED_PRIVS = ["VM.Audit", "VM.Allocate", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
                    "VM.Config.Options", "VM.Config.Disk", "VM.PowerMgmt", "VM.Snapshot",
                    "VM.Snapshot.Rollback", "Datastore.Audit", "Datastore.AllocateSpace",
                    "Datastore.AllocateTemplate", "SDN.Use"]
#: tool → Debian package, for the "missing prerequisite" message
PREREQS = {"lxc-start": "lxc", "debootstrap": "debootstrap", "/usr/sbin/sshd": "openssh-server",
           "zstd": "zstd", "dpkg-deb": "dpkg", "gpg": "gnupg", "unshare": "util-linux",
           "chattr": "e2fsprogs", "dpkg-scanpackages": "dpkg-dev"}


class SimError(ProvisionError):
    """The simulated node cannot be started or stopped."""


@dataclass
class StartOptions:
    name: str = "pve"
    pve_version: str = "9.1"
    node: str = ""
    gpus: list[Gpu] = field(default_factory=lambda: [Gpu()])
    driver: str = "580.95.05"
    api_port: int = 8006
    ssh_port: int = 2222
    apt_port: int = 8089
    uvm_loaded: bool = True
    #: join (or found) the simulated cluster of this name (sim/cluster.py); "" = stand-alone
    cluster: str = ""


def sim_root(name: str) -> Path:
    return BASE / name


def check_prerequisites() -> None:
    """Fail with the apt command when something the simulator needs is missing."""
    if platform.system() != "Linux":
        raise SimError("the simulated node needs Linux")
    if os.geteuid() != 0:
        raise SimError("the simulated node needs root (it runs LXC containers and sshd)",
                       fix="run as root, e.g. sudo provision sim start")
    missing = sorted({pkg for tool, pkg in PREREQS.items() if shutil.which(tool) is None})
    if missing:
        raise SimError(f"missing tools for the simulated node: {', '.join(missing)}",
                       fix=f"apt-get install -y {' '.join(missing)}")


LXC_NET = "/usr/libexec/lxc/lxc-net"
LXC_RUN = Path("/run/lxc")


def ensure_bridge() -> None:
    """lxc-net's lxcbr0 (10.0.3.1/24, dnsmasq, NAT) stands in for PVE's vmbr0.

    The bridge and its NAT rules outlive the processes of the session that made them, but
    its dnsmasq (DHCP and DNS for the containers) may not: a machine whose processes were
    ended keeps lxcbr0 with no DNS. So both are checked, and a missing dnsmasq is started
    alone, without taking the bridge down under other nodes' running containers.
    """
    bridge_up = BRIDGE_IP in subprocess.run(["ip", "-4", "addr", "show", "lxcbr0"], capture_output=True,
                                            text=True, check=False).stdout
    if bridge_up and _dnsmasq_alive():
        return
    if bridge_up:
        _start_dnsmasq()
        return
    # A stale marker from a run whose bridge is gone makes `lxc-net start` refuse ("already running").
    subprocess.run([LXC_NET, "stop", "force"], capture_output=True, text=True, check=False)
    proc = subprocess.run([LXC_NET, "start"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimError(f"could not bring up lxcbr0: {proc.stderr.strip() or proc.stdout.strip()}")


def _dnsmasq_alive() -> bool:
    try:
        pid = int((LXC_RUN / "dnsmasq.pid").read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
    except (OSError, ValueError):
        return False


def _start_dnsmasq() -> None:
    """The dnsmasq that lxc-net starts for lxcbr0 (its default settings), started again."""
    user = next((u for u in ("lxc-dnsmasq", "dnsmasq", "nobody")
                 if subprocess.run(["getent", "passwd", u], capture_output=True).returncode == 0), "nobody")
    Path("/var/lib/misc").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dnsmasq", "--conf-file=/dev/null", "-u", user, "--strict-order", "--bind-interfaces",
         f"--pid-file={LXC_RUN / 'dnsmasq.pid'}", "--listen-address", BRIDGE_IP,
         "--dhcp-range", "10.0.3.2,10.0.3.254", "--dhcp-lease-max=253", "--dhcp-no-override",
         "--except-interface=lo", "--interface=lxcbr0",
         "--dhcp-leasefile=/var/lib/misc/dnsmasq.lxcbr0.leases", "--dhcp-authoritative"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimError(f"lxcbr0 is up but its dnsmasq would not start: {proc.stderr.strip()}",
                       fix="run '/usr/libexec/lxc/lxc-net stop force' and start the node again")


def ensure_subids() -> None:
    """PVE hosts map root's subordinate ids 100000-165535; LXC's newuidmap needs it."""
    for f in ("/etc/subuid", "/etc/subgid"):
        text = Path(f).read_text() if Path(f).exists() else ""
        if "root:100000:65536" not in text.split():
            with open(f, "a") as fh:
                fh.write(("" if text.endswith("\n") or not text else "\n") + "root:100000:65536\n")


def _check_chattr(directory: Path) -> None:
    """The immutable-resolv.conf scenario needs chattr on the containers' filesystem."""
    probe = directory / ".chattr-probe"
    probe.write_text("")
    try:
        proc = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SimError(f"chattr does not work on {directory}: {proc.stderr.strip()}",
                           fix="put /var/lib/provision-sim on ext4/xfs/btrfs (PROVISION_SIM_BASE)")
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    finally:
        probe.unlink(missing_ok=True)


def host_pid(root: Path) -> int | None:
    try:
        pid = int((root / "run" / "host.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _secret(path: Path, make: str) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make + "\n")
    return path.read_text().strip()


def start(opts: StartOptions, log=print) -> dict:
    """Start the node (idempotent); returns connection.json's content."""
    check_prerequisites()
    root = sim_root(opts.name)
    if host_pid(root) and (root / "connection.json").exists():
        log(f"simulated node '{opts.name}' already running")
        return json.loads((root / "connection.json").read_text())
    cleanup(root, keep_state=True)
    node = opts.node or opts.name
    if opts.cluster:
        try:
            first = sim_cluster.prepare_member(root, opts.cluster, node)
        except ValueError as exc:
            raise SimError(str(exc), fix="give the node another name (--node)") from None
        if first is not None:
            (root / "secrets").mkdir(parents=True, exist_ok=True)
            sim_cluster.copy_secrets(first, root)
    for sub in ("run", "log", "faults", "etc/pve/lxc", "lxc", "storage/local/template/cache",
                "secrets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "secrets").chmod(0o700)
    ensure_bridge()
    ensure_subids()
    _check_chattr(root / "storage")
    t0 = time.monotonic()
    rootfs.ensure_template(log)
    log(f"rootfs cache ready ({time.monotonic() - t0:.1f}s)")
    password = _secret(root / "secrets" / "root_password", secrets.token_urlsafe(18))
    token = _secret(root / "secrets" / "token_secret", _uuid())
    restricted = _secret(root / "secrets" / "restricted_token_secret", _uuid())
    cert, _ = tls.ensure_certificate(root, node)
    settings = {"name": opts.name, "node": node, "version": opts.pve_version,
                "api_port": opts.api_port, "ssh_port": opts.ssh_port, "apt_port": opts.apt_port,
                "root_password": password,
                # the full token (made with --privsep 0: root's rights) and a restricted one
                "tokens": {TOKEN_ID: {"secret": token, "privsep": 0},
                           RESTRICTED_TOKEN_ID: {"secret": restricted, "privsep": 1}},
                "roles": {RESTRICTED_ROLE: RESTRICTED_PRIVS},
                "acl": [{"path": "/", "roles": [RESTRICTED_ROLE], "propagate": 1,
                         "users": [RESTRICTED_TOKEN_ID.split("!")[0]], "tokens": [RESTRICTED_TOKEN_ID]}],
                "fingerprint": tls.fingerprint(cert), "delay_ms": 0,
                "gpus": [g.__dict__ for g in opts.gpus], "driver": opts.driver}
    if opts.cluster:
        settings["cluster"] = opts.cluster
    _write_private(root / "sim.json", json.dumps(settings, indent=2))
    NvidiaHost(root).install(NvidiaState(driver=opts.driver, gpus=opts.gpus, uvm_loaded=opts.uvm_loaded))
    ensure_ssh_keys(root, opts.ssh_port)
    for port in (opts.api_port, opts.ssh_port):
        if _port_open(port):
            raise SimError(f"port {port} is already in use", fix="pick other ports (--api-port/--ssh-port)")
    out = open(root / "log" / "host.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
         "provisioner.sim.host.namespace", "run", "--root", str(root)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        env={**os.environ, "PYTHONPATH": _pythonpath()})
    (root / "run" / "host.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    want = [opts.ssh_port] + ([] if os.environ.get("PROVISION_SIM_NO_API") == "1" else [opts.api_port])
    while not ((root / "run" / "host.ready").exists() and all(_port_open(p) for p in want)):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = _tail(root / "log" / "host.log") + _tail(root / "log" / "api.log")
            stop(opts.name, keep_state=True)
            raise SimError(f"simulated node '{opts.name}' did not come up:\n{tail}")
        time.sleep(0.2)
    conn = connection_info(root, settings)
    if opts.cluster:
        sim_cluster.register(opts.cluster, node, {"sim_root": str(root), "api_port": opts.api_port,
                                                  "ssh_port": opts.ssh_port,
                                                  "fingerprint": settings["fingerprint"]})
        conn["cluster"] = opts.cluster
    _write_private(root / "connection.json", json.dumps(conn, indent=2))
    return conn


def connection_info(root: Path, settings: dict) -> dict:
    """What a host file needs (secrets by file, never inline)."""
    apt = f"http://{BRIDGE_IP}:{settings['apt_port']}/compute/cuda/repos/debian12/x86_64/"
    return {
        "name": settings["name"], "node": settings["node"], "pve_version": settings["version"],
        "sim_root": str(root),
        "api": {"host": "127.0.0.1", "port": settings["api_port"],
                "url": f"https://127.0.0.1:{settings['api_port']}/api2/json",
                "fingerprint": settings["fingerprint"], "user": "root@pam",
                "password_file": str(root / "secrets" / "root_password"),
                "token_id": TOKEN_ID, "token_secret_file": str(root / "secrets" / "token_secret"),
                "restricted_token_id": RESTRICTED_TOKEN_ID,
                "restricted_token_secret_file": str(root / "secrets" / "restricted_token_secret")},
        "ssh": {"host": "127.0.0.1", "port": settings["ssh_port"], "user": "root",
                "key_file": str(root / "ssh" / "id_ed25519"),
                "known_hosts": str(root / "ssh" / "known_hosts")},
        "network": {"bridge": "vmbr0", "real_bridge": "lxcbr0", "gateway": BRIDGE_IP,
                    "cidr": "10.0.3.0/24", "nameserver": BRIDGE_IP},
        "storage": {"rootfs": "local-lvm", "templates": "local"},
        "template": rootfs.TEMPLATE_NAME,
        "cuda_repo_url": apt,
        "cuda_keyring_url": apt + "cuda-keyring_1.1-1_all.deb",
    }


def cleanup(root: Path, *, keep_state: bool) -> list[str]:
    """Remove containers, mounts, device nodes and processes of the node at ``root``."""
    done: list[str] = []
    pid = host_pid(root)
    if pid:
        os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if host_pid(root) is None:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        done.append(f"stopped host process {pid}")
    backend = LxcBackend(root) if root.exists() else None
    if backend is not None:
        for ct in sorted(p for p in backend.lxcpath.iterdir() if p.name.isdigit()):
            if backend.status(int(ct.name)) == "running":
                backend.stop(int(ct.name), lambda _: None)
                done.append(f"stopped CT {ct.name}")
    for mnt in reversed(_mounts_under(root)):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        done.append(f"unmounted {mnt}")
    if (root / "host" / "nvidia.json").exists():
        NvidiaHost(root).remove_nodes()
        done.append("removed NVIDIA device nodes")
    (root / "run" / "host.pid").unlink(missing_ok=True)
    (root / "run" / "host.ready").unlink(missing_ok=True)
    if not keep_state and root.exists():
        settings = _settings(root)
        if settings.get("cluster"):
            sim_cluster.leave(root, settings["cluster"], settings.get("node") or root.name)
            done.append(f"left cluster {settings['cluster']}")
        subprocess.run(["chattr", "-R", "-i", "-a", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        done.append(f"removed {root}")
    return done


def _settings(root: Path) -> dict:
    try:
        return json.loads((root / "sim.json").read_text())
    except (OSError, ValueError):
        return {}


def stop(name: str, *, keep_state: bool = False) -> list[str]:
    return cleanup(sim_root(name), keep_state=keep_state)


def status(name: str) -> dict:
    root = sim_root(name)
    if not root.exists():
        return {"name": name, "state": "absent"}
    settings = json.loads((root / "sim.json").read_text()) if (root / "sim.json").exists() else {}
    pid = host_pid(root)
    backend = LxcBackend(root)
    cts = {p.name: backend.status(int(p.name)) for p in sorted(backend.lxcpath.iterdir())
           if p.name.isdigit()}
    return {"name": name, "state": "running" if pid else "stopped", "host_pid": pid,
            "api": bool(settings) and _port_open(settings["api_port"]),
            "ssh": bool(settings) and _port_open(settings["ssh_port"]),
            "containers": cts, "sim_root": str(root),
            "driver": NvidiaHost(root).load().driver if (root / "host/nvidia.json").exists() else None}


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(prefix):
            out.append(mnt)
    return out


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) + "\n"
    except OSError:
        return ""


def _uuid() -> str:
    import uuid
    return str(uuid.uuid4())


def _pythonpath() -> str:
    repo = str(Path(__file__).resolve().parents[2])
    return repo + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
