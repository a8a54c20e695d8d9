"""Fault injection for a simulated node (also ``provision sim fault ...``).

Every fault changes real state the provisioner will meet:
- ``upgrade_host_driver``: the loaded module version and every fake host file
  change (containers keep their userspace: the classic mismatch). With
  ``reboot=False`` only the on-disk module (modinfo) and the host userspace change.
- ``drop_uvm``: nvidia_uvm unloaded, /dev/nvidia-uvm* gone (as after a reboot);
  ``nvidia-modprobe -u -c=0`` on the host brings them back.
- ``hold_dpkg_lock``: a process in the CT holds the fcntl lock on
  /var/lib/dpkg/lock-frontend (named ``unattended-upgr`` like the usual culprit).
- ``secure_boot``, ``dkms_status_warning``, ``leftover_kernel_dir``, ``set_newer_kernel``,
  ``dkms_build_fails``: the host's boot, DKMS and kernel state (sim/host/packages.py reads them).
- ``stop_apt_server``: the simulated NVIDIA repository's server goes down (and back).
- ``drop_ssh_connections``: kills sshd's per-connection processes (the listener stays).
- ``fail_next_task``: the next API task of a type fails with a message (read by sim/tasks.py).
- ``set_api_delay`` (sim.json ``delay_ms``, read by the API per request) and
  ``set_ssh_delay`` (``faults/ssh_delay_ms``, slept by the ForceCommand wrapper
  before every SSH command; more precise than netem on lo, which would slow everything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from provisioner.sim.host.nvidia import NvidiaHost

_LOCKER = r"""
use Fcntl;
$0 = "unattended-upgr";
open(my $fh, ">>", "/var/lib/dpkg/lock-frontend") or die "open: $!";
my $lk = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
fcntl($fh, F_SETLKW, $lk) or die "lock: $!";
$| = 1; print "locked $$\n";
sleep($ARGV[0]);
"""


class Faults:
    """Fault injection bound to one SIM_ROOT."""

    def __init__(self, sim_root: Path) -> None:
        self.root = Path(sim_root)
        (self.root / "faults").mkdir(parents=True, exist_ok=True)

    def upgrade_host_driver(self, version: str, *, reboot: bool = True) -> None:
        """Install ``version`` on the host; without ``reboot`` the old module stays loaded.

        As the packages would: DKMS's module for the running kernel is now ``version``, so a later
        reboot of the node (sim/host/packages.py reboot) loads it.
        """
        from provisioner.sim.host.packages import Host

        NvidiaHost(self.root).set_driver(version, loaded=reboot)
        h = Host(self.root)
        dkms, kver = h.dkms, h.nv.load().running_kernel
        if dkms:
            for built in dkms.values():
                built.pop(kver, None)
            dkms = {v: k for v, k in dkms.items() if k}
            dkms.setdefault(version, {})[kver] = "installed"
            h._save("dkms.json", dkms)

    def stop_apt_server(self, stopped: bool = True) -> None:
        """The simulated NVIDIA repository's HTTP server stops (connection refused) or comes back;
        the node's host process applies it within a second (sim/host/namespace.py)."""
        import time

        flag = self.root / "faults" / "apt_stopped"
        flag.write_text("1\n") if stopped else flag.unlink(missing_ok=True)
        time.sleep(1.0)

    def drop_uvm(self) -> None:
        NvidiaHost(self.root).drop_uvm()

    def set_newer_kernel(self, kver: str, *, has_module: bool) -> None:
        """An installed (not running) newer kernel, with or without the DKMS-built module."""
        host = NvidiaHost(self.root)
        st = host.load()
        st.newer_kernel, st.newer_kernel_has_module = kver, has_module
        host.save(st)
        host.refresh(st)
        # the simulated package database agrees: its kernel package, and DKMS built for it
        # (headers installed) or not (no headers: the usual way into the upgrade trap)
        from provisioner.sim.host.packages import Host

        if not kver:
            return
        pkgs = Host(self.root)
        status = pkgs.status
        status[f"proxmox-kernel-{kver}-signed"] = {"version": kver.removesuffix("-pve"), "state": "ii",
                                                   "held": False}
        dkms = pkgs.dkms
        if has_module and st.installed:
            status[f"proxmox-headers-{kver}"] = {"version": kver.removesuffix("-pve"), "state": "ii",
                                                 "held": False}
            dkms.setdefault(st.installed, {})[kver] = "installed"
        pkgs.set_status(status)
        pkgs._save("dkms.json", dkms)

    def dkms_build_fails(self, version: str, kver: str) -> None:
        """DKMS cannot build driver ``version`` for kernel ``kver`` (e.g. a kernel too new for it)."""
        from provisioner.sim.host.packages import Host

        path = Host(self.root).dir / "dkms-broken"
        lines = path.read_text().split("\n") if path.exists() else []
        path.write_text("\n".join([ln for ln in lines if ln] + [f"{version} {kver}"]) + "\n")

    def leftover_kernel_dir(self, kver: str) -> None:
        """A /lib/modules/<kver> directory (with a DKMS-built nvidia.ko) of a kernel whose package is gone."""
        host = NvidiaHost(self.root)
        st = host.load()
        st.leftover_kernels = sorted(set(st.leftover_kernels) | {kver})
        host.save(st)
        host.refresh(st)

    def dkms_status_warning(self, on: bool = True) -> None:
        """`dkms status` lines carry dkms' "(WARNING! Diff between built and installed module!)"."""
        from provisioner.sim.host.packages import Host

        path = Host(self.root).dir / "dkms-warn"
        path.write_text("1\n") if on else path.unlink(missing_ok=True)

    def secure_boot(self, enabled: bool) -> None:
        """UEFI Secure Boot on or off (mokutil --sb-state; DKMS modules then need an enrolled MOK)."""
        from provisioner.sim.host.packages import Host

        h = Host(self.root)
        sb = h.secureboot
        sb["enabled"] = enabled
        h._save("secureboot.json", sb)

    def set_gpus(self, gpus: list) -> None:
        """Replace the host's GPUs (sim.nvidia.Gpu list), e.g. a Pascal card."""
        host = NvidiaHost(self.root)
        st = host.load()
        st.gpus = gpus
        host.save(st)
        host.remove_nodes()
        host.install(st)

    def hold_dpkg_lock(self, vmid: int, seconds: float) -> DpkgLock:
        """Hold the CT's dpkg frontend lock for ``seconds``; returns once it is held."""
        proc = subprocess.Popen(
            ["lxc-attach", "-P", str(self.root / "lxc"), "-n", str(vmid), "--clear-env", "--",
             "perl", "-e", _LOCKER, str(seconds)], stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        word, _, pid = proc.stdout.readline().decode().strip().partition(" ")
        if word != "locked":
            proc.kill()
            raise RuntimeError(f"could not take the dpkg lock in CT {vmid}")
        return DpkgLock(self.root, vmid, int(pid), proc)

    def drop_ssh_connections(self) -> int:
        """Kill every SSH connection (sshd's per-connection children); returns how many."""
        try:
            listener = int((self.root / "run" / "sshd.pid").read_text())
        except (OSError, ValueError):
            return 0
        killed = 0
        for pid in _children(listener):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def fail_next_task(self, task_type: str = "*", message: str = "injected failure") -> None:
        path = self.root / "faults" / "fail_next_task.json"
        path.write_text(json.dumps({"type": task_type, "message": message}))

    def set_api_delay(self, ms: int) -> None:
        path = self.root / "sim.json"
        data = json.loads(path.read_text())
        data["delay_ms"] = int(ms)
        tmp = path.with_suffix(".fault.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def set_ssh_delay(self, ms: int) -> None:
        (self.root / "faults" / "ssh_delay_ms").write_text(f"{int(ms)}\n")

    def clear(self) -> None:
        """Undo the delay and task faults (driver and uvm state stay as they are)."""
        self.set_ssh_delay(0)
        if (self.root / "sim.json").exists():
            self.set_api_delay(0)
        (self.root / "faults" / "fail_next_task.json").unlink(missing_ok=True)


class DpkgLock:
    """A held dpkg lock; ``release()`` ends the holder early (the CT-side pid is known)."""

    def __init__(self, root: Path, vmid: int, ct_pid: int, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.vmid, self.ct_pid, self.proc = root, vmid, ct_pid, proc

    def release(self) -> None:
        if self.proc.poll() is None:
            subprocess.run(["lxc-attach", "-P", str(self.root / "lxc"), "-n", str(self.vmid), "--",
                            "kill", str(self.ct_pid)], capture_output=True, check=False)
            self.proc.wait(timeout=10)


def _children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the ppid is the 2nd field after the parenthesised command name
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            out.append(int(entry))
    return out
