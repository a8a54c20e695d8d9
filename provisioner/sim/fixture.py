"""The ``sim_node`` pytest fixture: a real simulated Proxmox node for one test session.

It starts a node with a unique name and free ports, yields a ``SimNode`` handle,
and at the end removes every container, mount, device node and process it made
(also after failed tests; stale nodes of dead test runs are removed at start).
Needs root, lxc and debootstrap: without them the fixture fails loudly.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest

from provisioner.sim import manage
from provisioner.sim.host.faults import Faults
from provisioner.sim.host.namespace import BRIDGE_IP
from provisioner.sim.host.nvidia import Gpu
from provisioner.sim.lxc import rootfs
from provisioner.sim.lxc.backend import LxcBackend
from provisioner.sim.lxc.conf import veth_name
from provisioner.sim.pve.conf import ConfStore, PveConf, Section

STALE = re.compile(r"pt(\d+)(?:x|c\d+)?")


@dataclass
class SimNode:
    """Everything a test needs to talk to the node (secrets included: tests only)."""

    name: str
    sim_root: Path
    node: str
    version: str
    api_url: str
    api_port: int
    fingerprint: str
    token_id: str
    token_secret: str
    root_password: str
    ssh_host: str
    ssh_port: int
    ssh_key: Path
    known_hosts: Path
    conn: dict
    faults: Faults = field(repr=False)
    backend: LxcBackend = field(repr=False)

    def ssh(self) -> paramiko.SSHClient:
        """A paramiko client that checks the host key against the node's known_hosts."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.ssh_host, port=self.ssh_port, username="root",
                       key_filename=str(self.ssh_key), look_for_keys=False, allow_agent=False,
                       timeout=10)
        return client

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 300) -> tuple[int, str, str]:
        """Run ``command`` on the host over SSH; returns (exit code, stdout, stderr)."""
        with self.ssh() as client:
            chan_in, out, err = client.exec_command(command, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            text_out, text_err = out.read().decode(), err.read().decode()
            return out.channel.recv_exit_status(), text_out, text_err

    def wait_systemd(self, vmid: int, timeout: int = 120) -> str:
        """Wait for the CT's systemd to settle; returns is-system-running's answer.

        Right after a start systemctl cannot connect yet ("Failed to connect to bus"),
        so wait for systemd's private socket first.
        """
        _, out, _ = self.run(
            f"pct exec {vmid} -- sh -c 'i=0; while [ ! -S /run/systemd/private ] && [ $i -lt {timeout * 10} ]; "
            f"do sleep 0.1; i=$((i+1)); done; systemctl is-system-running --wait'", timeout=timeout + 30)
        return out.strip()

    def ip_for(self, vmid: int) -> str:
        """A 10.0.3.x address for CT ``vmid`` that no other simulated node on this machine uses."""
        return allocate_ip(self.name, vmid)

    def create_ct(self, vmid: int, **conf: str) -> dict[str, str]:
        """Write the PVE config and materialise the rootfs, as the API's create task does."""
        ip = allocate_ip(self.name, vmid)
        digest = hashlib.sha1(f"{self.sim_root}/{vmid}".encode()).hexdigest().upper()
        mac = "BC:24:11:" + ":".join(digest[i:i + 2] for i in (0, 2, 4))
        values = {"arch": "amd64", "ostype": "debian", "hostname": f"ct{vmid}", "memory": "1024",
                  "swap": "512", "cores": "1", "rootfs": f"local-lvm:vm-{vmid}-disk-0,size=8G",
                  "unprivileged": "1",
                  "net0": f"name=eth0,bridge=vmbr0,ip={ip}/24,gw={BRIDGE_IP},hwaddr={mac},type=veth"}
        values.update(conf)
        ConfStore(self.sim_root).save(vmid, PveConf(main=Section(values=dict(values))))
        self.backend.create(vmid, values, rootfs.ensure_template(), lambda _: None)
        return values

    def destroy_ct(self, vmid: int) -> None:
        store = ConfStore(self.sim_root)
        conf = store.load(vmid).values if store.exists(vmid) else {}
        self.backend.destroy(vmid, conf, lambda _: None)
        store.remove(vmid)


LEASES = manage.BASE / ".ip-leases"


def allocate_ip(node_name: str, vmid: int) -> str:
    """A free 10.0.3.x for a test CT, unique across the simulated nodes running on this machine
    (they share the bridge). Leases of nodes whose SIM_ROOT is gone are reused."""
    manage.BASE.mkdir(parents=True, exist_ok=True)
    with open(LEASES, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        leases = [line.split() for line in fh.read().splitlines() if len(line.split()) == 3]
        live = [entry for entry in leases if (manage.BASE / entry[1]).exists()]
        for ip, name, owner in live:
            if name == node_name and owner == str(vmid):
                return ip
        used = {entry[0] for entry in live}
        for host in range(100, 250):
            ip = f"{BRIDGE_IP[:-1]}{host}"
            if ip not in used:
                live.append([ip, node_name, str(vmid)])
                fh.seek(0)
                fh.truncate()
                fh.write("".join(" ".join(entry) + "\n" for entry in live))
                return ip
    raise RuntimeError("no free test address on the sim bridge (10.0.3.100-249)")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def remove_stale_nodes() -> list[str]:
    """Clean up nodes left by test runs whose process is gone."""
    removed = []
    if not manage.BASE.exists():
        return removed
    for entry in manage.BASE.iterdir():
        m = STALE.fullmatch(entry.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            manage.cleanup(entry, keep_state=False)
            removed.append(entry.name)
    return removed


def start_sim_node(*, version: str = "9.1", driver: str = "580.95.05", name: str | None = None,
                   gpus: list[Gpu] | None = None, cluster: str = "", node: str = "") -> SimNode:
    """Start a node with a unique name and free ports (in ``cluster`` when given, see sim/cluster.py)."""
    manage.check_prerequisites()
    remove_stale_nodes()
    manage.ensure_bridge()
    opts = manage.StartOptions(name=name or f"pt{os.getpid()}", pve_version=version, driver=driver,
                               api_port=_free_port(), ssh_port=_free_port(),
                               apt_port=_free_port(BRIDGE_IP), cluster=cluster, node=node)
    if gpus is not None:
        opts.gpus = gpus
    conn = manage.start(opts, log=lambda _: None)
    root = Path(conn["sim_root"])
    return SimNode(
        name=opts.name, sim_root=root, node=conn["node"], version=version,
        api_url=conn["api"]["url"], api_port=conn["api"]["port"], fingerprint=conn["api"]["fingerprint"],
        token_id=conn["api"]["token_id"],
        token_secret=Path(conn["api"]["token_secret_file"]).read_text().strip(),
        root_password=Path(conn["api"]["password_file"]).read_text().strip(),
        ssh_host=conn["ssh"]["host"], ssh_port=conn["ssh"]["port"], ssh_key=Path(conn["ssh"]["key_file"]),
        known_hosts=Path(conn["ssh"]["known_hosts"]), conn=conn, faults=Faults(root),
        backend=LxcBackend(root))


def start_sim_cluster(nodes: dict[str, list[Gpu]], *, version: str = "9.1") -> list[SimNode]:
    """A simulated cluster of one node per entry (node name → its GPUs), unique names and ports."""
    cluster = f"pt{os.getpid()}"
    started: list[SimNode] = []
    try:
        for i, (node, gpus) in enumerate(nodes.items(), start=1):
            started.append(start_sim_node(version=version, name=f"pt{os.getpid()}c{i}", gpus=gpus,
                                          cluster=cluster, node=node))
    except BaseException:
        for n in started:
            manage.stop(n.name)
        raise
    return started


def leftovers(node: SimNode, vmids: list[int]) -> list[str]:
    """What a stopped node (that ran CTs ``vmids``) left behind; empty when clean-up was complete."""
    found = []
    if node.sim_root.exists():
        found.append(f"{node.sim_root} exists")
    mounts = Path("/proc/self/mounts").read_text()
    if str(node.sim_root) in mounts:
        found.append("mounts under SIM_ROOT")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
    found += [f"process: {line.strip()}" for line in ps.splitlines() if str(node.sim_root) in line]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    for vmid in vmids:
        if veth_name(vmid, 0, node.backend.node_tag) in links:
            found.append(f"veth of CT {vmid}")
    return found


@pytest.fixture(scope="session")
def sim_node() -> Iterator[SimNode]:
    """A running simulated PVE 9.1 node shared by the session; fully removed afterwards."""
    node = start_sim_node()
    try:
        yield node
    finally:
        vmids = [int(p.name) for p in (node.sim_root / "lxc").iterdir() if p.name.isdigit()]
        manage.stop(node.name)
        left = leftovers(node, vmids)
        assert not left, f"simulated node {node.name} left: {left}"


#: the ``sim_cluster`` fixture's nodes: different GPU models, so placement by kind has a choice
CLUSTER_GPUS = {"pve1": [Gpu()], "pve2": [Gpu("NVIDIA GeForce RTX 5090", "12.0", 32607)]}


@pytest.fixture(scope="module")
def sim_cluster() -> Iterator[list[SimNode]]:
    """A running 2-node simulated PVE cluster (pve1: RTX 4090, pve2: RTX 5090); removed afterwards."""
    nodes = start_sim_cluster(CLUSTER_GPUS)
    try:
        yield nodes
    finally:
        for node in nodes:
            vmids = [int(p.name) for p in (node.sim_root / "lxc").iterdir() if p.name.isdigit()]
            manage.stop(node.name)
            left = leftovers(node, vmids)
            assert not left, f"simulated node {node.name} left: {left}"
        assert not (manage.BASE / ".clusters" / f"pt{os.getpid()}").exists()
