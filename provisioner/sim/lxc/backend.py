"""LxcBackend: real LXC containers behind the simulated PVE node.

Layout (see docs/ARCHITECTURE.md): rootfs in
``SIM_ROOT/storage/<storage>/images/<vmid>/rootfs``, snapshots next to it in
``.../snapshots/<name>``, generated LXC config in ``SIM_ROOT/lxc/<vmid>/config``
(lxcpath ``SIM_ROOT/lxc``, which the sim host namespace shows as /var/lib/lxc).
Snapshots are full rootfs copies, so every storage of the sim supports them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from provisioner.sim.lxc import conf as lxcconf
from provisioner.sim.lxc import devices, rootfs
from provisioner.sim.lxc import setup as ctsetup
from provisioner.sim.lxc.base import CtState, Log, SimTaskError
from provisioner.sim.pve import hookscript
from provisioner.sim.pve.conf import ConfStore


class LxcBackend:
    """Drives real containers with the lxc-* tools; raises SimTaskError with PVE's texts."""

    def __init__(self, sim_root: Path) -> None:
        self.sim_root = Path(sim_root)
        self.lxcpath = self.sim_root / "lxc"
        self.lxcpath.mkdir(parents=True, exist_ok=True)
        #: "" for the default node "pve" (PVE's veth names), else a short tag of SIM_ROOT
        self.node_tag = "" if self.sim_root.name == "pve" else \
            hashlib.sha1(str(self.sim_root).encode()).hexdigest()[:3]
        #: the node's own /dev (shown at /dev in the sim namespace); devN paths resolve here
        self.host_dev = self.sim_root / "host" / "dev"

    # -- paths -------------------------------------------------------------
    def _images(self, vmid: int, conf: dict[str, str] | None = None) -> Path:
        if conf and "rootfs" in conf:
            storage = conf["rootfs"].split(",")[0].split(":")[0] or "local"
            if not storage.startswith("/"):
                return self.sim_root / "storage" / storage / "images" / str(vmid)
        found = sorted(self.sim_root.glob(f"storage/*/images/{vmid}"))
        if not found:
            raise SimTaskError(f"unable to find rootfs of CT {vmid}")
        return found[0]

    def rootfs_path(self, vmid: int, conf: dict[str, str] | None = None) -> Path:
        return self._images(vmid, conf) / "rootfs"

    def _ctdir(self, vmid: int) -> Path:
        return self.lxcpath / str(vmid)

    def _lxc(self, tool: str, vmid: int, *args: str, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [f"lxc-{tool}", "-P", str(self.lxcpath), "-n", str(vmid), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise SimTaskError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")
        return proc

    # -- Backend protocol --------------------------------------------------
    def create(self, vmid: int, conf: dict[str, str], ostemplate: Path, log: Log) -> None:
        dest = self.rootfs_path(vmid, conf)
        t0 = time.monotonic()
        rootfs.materialise(Path(ostemplate), dest, unprivileged=conf.get("unprivileged") == "1",
                           log=log)
        self._ctdir(vmid).mkdir(parents=True, exist_ok=True)
        log(f"rootfs ready in {time.monotonic() - t0:.1f}s")

    def start(self, vmid: int, conf: dict[str, str], log: Log, debug: bool = False) -> None:
        if self.status(vmid) == "running":
            raise SimTaskError(f"CT {vmid} already running")
        root = self.rootfs_path(vmid, conf)
        ctdir = self._ctdir(vmid)
        ctdir.mkdir(parents=True, exist_ok=True)
        dev_lines = devices.prepare(conf, ctdir / "passthrough", self.host_dev)
        shift = lxcconf.ID_SHIFT if conf.get("unprivileged") == "1" else 0
        try:
            ctsetup.setup(root, vmid, conf, shift, shift)
        except SimTaskError as exc:
            hook_failed(vmid, str(exc), log, debug=debug)
        nvidia_proc = self.sim_root / "host" / "proc" / "driver"
        text = lxcconf.render(vmid, conf, rootfs=root, dev_lines=dev_lines,
                              nvidia_proc=nvidia_proc if devices.has_nvidia(conf)
                              and nvidia_proc.is_dir() else None,
                              log_file=ctdir / "lxc.log", node_tag=self.node_tag)
        (ctdir / "config").write_text(text)
        (ctdir / "lxc.log").unlink(missing_ok=True)
        hookscript.run(self.sim_root, conf, vmid, "pre-start", log, stop_on_error=True)
        proc = self._start_outside_fake_view(vmid)
        if proc.returncode != 0:
            tail = _tail(ctdir / "lxc.log")
            raise SimTaskError(f"startup for container '{vmid}' failed" + (f": {tail}" if tail else ""))
        self._lxc("wait", vmid, "-s", "RUNNING", "-t", "30")
        hookscript.run(self.sim_root, conf, vmid, "post-start", log)

    def _start_outside_fake_view(self, vmid: int) -> subprocess.CompletedProcess[str]:
        """lxc-start in a private child mount namespace without the sim host's overmounts.

        The kernel lets an unprivileged CT mount a fresh proc/sysfs only if the
        existing ones are fully visible; the fake /proc/devices, /sys/module and /dev
        of the sim namespace hide parts of them, so they are dropped first. The
        private namespace is used even outside the sim namespace: started from a
        namespace with other propagation, LXC's autodev binds were seen to fail.
        """
        mounts = _mount_types()
        # /dev is always a mount point; it is the sim's own only when it is not the devtmpfs
        fake = {m for m in FAKE_VIEW_MOUNTS if m in mounts and (m != "/dev" or mounts[m] != "devtmpfs")}
        drop = " ".join(sorted(fake))
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'for m in {drop}; do umount -l "$m" 2>/dev/null; done; exec "$@"', "sh",
               "lxc-start", "-P", str(self.lxcpath), "-n", str(vmid)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def stop(self, vmid: int, log: Log) -> None:
        if self.status(vmid) == "running":
            conf = self._hook_conf(vmid)
            hookscript.run(self.sim_root, conf, vmid, "pre-stop", log)
            self._lxc("stop", vmid, "-k")
            hookscript.run(self.sim_root, conf, vmid, "post-stop", log)

    def _hook_conf(self, vmid: int) -> dict[str, str]:
        store = ConfStore(self.sim_root)
        return store.load(vmid).values if store.exists(vmid) else {}

    def shutdown(self, vmid: int, timeout: int, log: Log) -> None:
        if self.status(vmid) != "running":
            return
        conf = self._hook_conf(vmid)
        hookscript.run(self.sim_root, conf, vmid, "pre-stop", log)
        try:
            self._shutdown(vmid, timeout, log)
        finally:
            hookscript.run(self.sim_root, conf, vmid, "post-stop", log)

    def _shutdown(self, vmid: int, timeout: int, log: Log) -> None:
        proc = self._lxc("stop", vmid, "-t", str(timeout), check=False, timeout=timeout + 30)
        if self.status(vmid) == "running":
            log(f"shutdown of CT {vmid} timed out after {timeout}s - killing")
            self._lxc("stop", vmid, "-k")
        elif proc.returncode not in (0, 2):
            log(proc.stderr.strip())

    def status(self, vmid: int) -> CtState:
        if not (self._ctdir(vmid) / "config").exists():
            return "stopped"
        proc = self._lxc("info", vmid, "-s", "-H", check=False, timeout=30)
        return "running" if proc.stdout.strip() in ("RUNNING", "STARTING", "STOPPING") else "stopped"

    def destroy(self, vmid: int, conf: dict[str, str], log: Log) -> None:
        self.stop(vmid, log)
        self.unmount(vmid)
        try:
            images = self._images(vmid, conf)
        except SimTaskError:
            images = None
        if images is not None and images.exists():
            _remove_tree(images)
        shutil.rmtree(self._ctdir(vmid), ignore_errors=True)
        log(f"destroyed CT {vmid}")

    def mount(self, vmid: int, conf: dict[str, str]) -> Path:
        """Bind the rootfs on ``/var/lib/lxc/<vmid>/rootfs`` (in the sim host namespace, where
        /var/lib/lxc is SIM_ROOT/lxc), else on ``SIM_ROOT/lxc/<vmid>/rootfs``; returns it."""
        mnt = self._mountpoints(vmid)[0]
        mnt.mkdir(parents=True, exist_ok=True)
        if str(mnt) not in _mountpoints():  # os.path.ismount misses same-fs binds
            subprocess.run(["mount", "--bind", str(self.rootfs_path(vmid, conf)), str(mnt)],
                           check=True)
        return mnt

    def unmount(self, vmid: int) -> None:
        for mnt in self._mountpoints(vmid):
            while str(mnt) in _mountpoints():
                subprocess.run(["umount", str(mnt)], check=True)

    def _mountpoints(self, vmid: int) -> list[Path]:
        own = self._ctdir(vmid) / "rootfs"
        if _same_dir(Path("/var/lib/lxc"), self.lxcpath):  # inside this node's namespace
            return [Path("/var/lib/lxc") / str(vmid) / "rootfs", own]
        return [own]

    def snapshot(self, vmid: int, name: str, log: Log) -> None:
        snap = self._images(vmid) / "snapshots" / name
        if snap.exists():
            raise SimTaskError(f"snapshot name '{name}' already used")
        snap.parent.mkdir(parents=True, exist_ok=True)
        # A copy of a running CT is crash-consistent, like an LVM-thin snapshot.
        subprocess.run(["cp", "-a", f"{self.rootfs_path(vmid)}/.", str(snap)], check=True)
        log(f"snapshot '{name}' of CT {vmid} created")

    def rollback(self, vmid: int, name: str, log: Log) -> None:
        snap = self._images(vmid) / "snapshots" / name
        if not snap.exists():
            raise SimTaskError(f"snapshot '{name}' does not exist")
        self.stop(vmid, log)
        root = self.rootfs_path(vmid)
        _remove_tree(root)
        root.mkdir()
        subprocess.run(["cp", "-a", f"{snap}/.", str(root)], check=True)
        log(f"CT {vmid} rolled back to '{name}'")

    def delete_snapshot(self, vmid: int, name: str, log: Log) -> None:
        snap = self._images(vmid) / "snapshots" / name
        if snap.exists():
            _remove_tree(snap)

    def hotplug(self, vmid: int, key: str, value: str) -> None:
        """Hot-plug ``key`` into the running CT (the rules' hotplug callback).

        devN: the node appears in the CT with the host's current major:minor
        (bind mount injected into the CT's mount namespace, as PVE 9 does).
        netN: accepted; the simulator applies it at the next start (a deviation).
        mpN with a host path: bind-mounted into the running CT (volumes: not simulated).
        """
        if key.startswith("dev"):
            pid = int(self._lxc("info", vmid, "-p", "-H").stdout.strip())
            unpriv = (self._ctdir(vmid) / "config").read_text().find("lxc.idmap") >= 0
            devices.hotplug(value, unpriv=unpriv, passthrough=self._ctdir(vmid) / "passthrough",
                            host_dev=self.host_dev,
                            lxc=lambda tool, *args: self._lxc(tool, vmid, *args), init_pid=pid)
        elif key.startswith("mp"):
            mps = lxcconf.bind_mounts({key: value})
            if not mps:
                raise SimTaskError("hot-plugging storage volumes is not simulated; use a host path")
            host, ct, ro = mps[0]
            if not os.path.isdir(host):
                raise SimTaskError(f"mount point '{host}' does not exist")
            pid = int(self._lxc("info", vmid, "-p", "-H").stdout.strip())
            self._lxc("attach", vmid, "--", "mkdir", "-p", ct)
            devices.inject_mount(host, pid, ct, read_only=ro)

    def provide_template(self, name: str, dest: Path, log: Log) -> None:
        """The API's aplinfo download: copy our debootstrapped template to ``dest``."""
        rootfs.provide_template(name, Path(dest), log)

    def running_vmids(self) -> list[int]:
        return [int(p.name) for p in self.lxcpath.iterdir()
                if p.name.isdigit() and self.status(int(p.name)) == "running"]


PRESTART_HOOK = "/usr/share/lxc/hooks/lxc-pve-prestart-hook"


def hook_failed(vmid: int, output: str, log: Log, *, debug: bool) -> None:
    """The pre-start hook (where PVE rewrites resolv.conf & co.) died with ``output``.

    LXC logs a hook's output at DEBUG only (lxc src/lxc/utils.c:558@e7b855a) and then ERRORs
    (utils.c:569, start.c:1037 and 2208); the pve-container@.service unit runs lxc-start at its
    default level, so the task log gets only the ERROR lines, and monitor_start ends the task with
    ``startup for container 'N' failed`` (pve-container src/PVE/LXC.pm:3064-3072 and 3110-3122,
    src/pve-container@.service; ``debug=1`` uses pve-container-debug@.service with ``-l DEBUG``
    @94f5585). So the hook's words reach the task log only with ``debug=1``. (REFERENCE §1 used
    to say the rename error is the start's error text.)"""
    if debug:
        log(f"run_buffer: 558 Script exec {PRESTART_HOOK} {vmid} lxc pre-start produced output: {output}")
    log("run_buffer: 569 Script exited with status 1")
    log(f'lxc_init: 1037 Failed to run lxc.hook.pre-start for container "{vmid}"')
    log(f'__lxc_start: 2208 Failed to initialize container "{vmid}"')
    raise SimTaskError(f"startup for container '{vmid}' failed")


#: overmounts made by provisioner.sim.host.namespace that would stop unprivileged CTs mounting proc/sys
FAKE_VIEW_MOUNTS = {"/proc/devices", "/proc/driver", "/sys/module", "/dev"}


def _same_dir(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _mount_types() -> dict[str, str]:
    """mount point -> file system type of the mount on top."""
    with open("/proc/self/mounts") as fh:
        return {parts[1]: parts[2] for parts in (line.split() for line in fh)}


def _mountpoints() -> set[str]:
    with open("/proc/self/mounts") as fh:
        return {line.split()[1] for line in fh}


def _remove_tree(path: Path) -> None:
    """rm -rf that also gets through files a test made immutable (chattr +i)."""
    subprocess.run(["chattr", "-R", "-i", "-a", str(path)], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _tail(log_file: Path, lines: int = 5) -> str:
    """The LXC log's first ERROR lines (the cause comes before the generic aftermath)."""
    try:
        rows = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [r for r in rows if " ERROR " in r] or rows[-lines:]
    return " | ".join(errors[:lines])
