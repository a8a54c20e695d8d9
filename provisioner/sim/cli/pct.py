"""``pct`` on the simulated host (installed as /usr/local/sbin/pct in the sim namespace).

Runs as root, so it acts as ``root@pam``: ``pct set`` may set root-only keys
(devN, bind mounts). Sub-commands: exec, push, pull, mount, unmount, config,
pending, set, start, stop, shutdown, status, list. Errors go to stderr with
PVE's text and exit code 255 (what a Perl ``die`` gives); ``pct exec`` passes the
command's exit code and stdin through.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from provisioner.pveschema import validate
from provisioner.sim.lxc.backend import LxcBackend
from provisioner.sim.lxc.base import SimTaskError
from provisioner.sim.pve import rules
from provisioner.sim.pve.conf import ConfStore

ATTACH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PctError(Exception):
    """Printed to stderr; exit 255."""


class Pct:
    def __init__(self, sim_root: Path) -> None:
        self.root = sim_root
        self.settings = json.loads((sim_root / "sim.json").read_text())
        self.version = str(self.settings.get("version", "9.1"))
        self.node = str(self.settings.get("node", "pve"))
        self.store = ConfStore(sim_root)
        self.backend = LxcBackend(sim_root)

    def conf(self, vmid: int) -> dict[str, str]:
        try:
            return self.store.load(vmid).main.as_dict()
        except FileNotFoundError:
            raise PctError(f"Configuration file 'nodes/{self.node}/lxc/{vmid}.conf' does not exist") from None

    def running(self, vmid: int) -> bool:
        self.conf(vmid)
        return self.backend.status(vmid) == "running"

    def need_running(self, vmid: int) -> None:
        if not self.running(vmid):
            raise PctError(f"CT {vmid} not running")

    def attach(self, vmid: int, cmd: list[str]) -> list[str]:
        return ["lxc-attach", "-P", str(self.backend.lxcpath), "-n", str(vmid), "--clear-env",
                "--keep-var", "TERM", "--set-var", f"PATH={ATTACH_PATH}", "--", *cmd]

    # -- sub-commands ------------------------------------------------------
    def exec(self, vmid: int, cmd: list[str]) -> int:
        self.need_running(vmid)
        if not cmd:
            raise PctError("missing command")
        os.execvp("lxc-attach", self.attach(vmid, cmd))
        return 255  # not reached

    def push(self, vmid: int, src: str, dst: str, perms: str | None, user: str | None,
             group: str | None) -> int:
        self.need_running(vmid)
        mode = perms or "0644"
        owner = f"{user or 0}:{group or user or 0}" if (user or group) else "0:0"
        script = ('umask 077; t="$1.pct-push.$$"; cat > "$t" && chown "$2" "$t" && chmod "$3" "$t" '
                  '&& mv -f "$t" "$1" || { rm -f "$t"; exit 1; }')
        try:
            with open(src, "rb") as fh:
                proc = subprocess.run(self.attach(vmid, ["/bin/sh", "-c", script, "push", dst, owner, mode]),
                                      stdin=fh, check=False)
        except FileNotFoundError:
            raise PctError(f"failed to open {src} for reading") from None
        if proc.returncode != 0:
            raise PctError(f"failed to write {dst}")
        return 0

    def pull(self, vmid: int, src: str, dst: str) -> int:
        self.need_running(vmid)
        with open(dst + ".pct-pull", "wb") as fh:
            proc = subprocess.run(self.attach(vmid, ["/bin/cat", "--", src]), stdout=fh, check=False)
        if proc.returncode != 0:
            os.unlink(dst + ".pct-pull")
            raise PctError(f"failed to open {src} for reading")
        os.replace(dst + ".pct-pull", dst)
        return 0

    def _set_lock(self, vmid: int, lock: str | None) -> None:
        with self.store.lock(vmid):
            pve = self.store.load(vmid)
            if lock:
                pve.values["lock"] = lock
            else:
                pve.values.pop("lock", None)
            self.store.save(vmid, pve)

    def mount(self, vmid: int) -> int:
        conf = self.conf(vmid)
        if conf.get("lock"):
            raise PctError(f"CT is locked ({conf['lock']})")
        path = self.backend.mount(vmid, conf)
        self._set_lock(vmid, "mounted")
        print(f"mounted CT {vmid} in '{path}'")
        return 0

    def unmount(self, vmid: int) -> int:
        self.conf(vmid)
        self.backend.unmount(vmid)
        self._set_lock(vmid, None)
        return 0

    def config(self, vmid: int, current: bool) -> int:
        self.conf(vmid)
        pve = self.store.load(vmid)
        values = dict(pve.values)
        if not current:
            values.update({k: v for k, v in pve.pending.values.items() if k != "delete"})
            for key in pve.pending_delete():
                values.pop(key, None)
        if "description" in values:
            for line in values.pop("description").rstrip("\n").split("\n"):
                print(f"description: {line}")
        for key in sorted(values):
            print(f"{key}: {values[key]}")
        for key, value in pve.main.lxc:
            print(f"{key}: {value}")
        return 0

    def pending(self, vmid: int) -> int:
        self.conf(vmid)
        for item in rules.pending_view(self.store.load(vmid)):
            key = item["key"]
            if "delete" in item:
                print(f"del {key}: {item.get('value', '')}")
            elif "pending" in item:
                if "value" in item:
                    print(f"cur {key}: {item['value']}")
                print(f"new {key}: {item['pending']}")
            else:
                print(f"cur {key}: {item['value']}")
        return 0

    def set(self, vmid: int, params: dict[str, str], delete: list[str], revert: list[str],
            digest: str | None) -> int:
        self.conf(vmid)
        check = dict(params)
        if delete:
            check["delete"] = ",".join(delete)
        errors = validate(self.version, "PUT", f"/nodes/{self.node}/lxc/{vmid}/config", check)
        if errors:
            raise PctError("400 Parameter verification failed.\n"
                           + "".join(f"{k}: {v}\n" for k, v in sorted(errors.items())).rstrip("\n"))
        try:
            rules.update_config(self.store, vmid, rules.Update(params, delete, revert, digest),
                                user=rules.ROOT, running=self.running(vmid), version=self.version,
                                hotplug=lambda key, value: self.backend.hotplug(vmid, key, value),
                                warn=lambda line: print(line, file=sys.stderr))
        except rules.RuleError as exc:
            text = exc.message
            if exc.errors:
                text = f"{exc.status} {exc.message}\n" + "".join(
                    f"{k}: {v}\n" for k, v in sorted(exc.errors.items())).rstrip("\n")
            raise PctError(text) from None
        return 0

    def start(self, vmid: int, debug: bool = False) -> int:
        """The API's vm_start run from the CLI (``lock: mounted`` may start, Status.pm:194)."""
        conf = self.conf(vmid)
        if conf.get("lock") and conf["lock"] != "mounted":
            raise PctError(f"CT is locked ({conf['lock']})")
        if self.running(vmid):
            raise PctError(f"CT {vmid} already running")
        conf = rules.apply_pending(self.store, vmid, self.version)
        self.backend.start(vmid, conf, _stdout, debug=debug)
        return 0

    def stop(self, vmid: int) -> int:
        if not self.running(vmid):
            raise PctError(f"CT {vmid} not running")
        self.backend.stop(vmid, _stdout)
        return 0

    def shutdown(self, vmid: int, timeout: int) -> int:
        if not self.running(vmid):
            raise PctError(f"CT {vmid} not running")
        self.backend.shutdown(vmid, timeout, _stdout)
        return 0

    def status(self, vmid: int) -> int:
        print(f"status: {'running' if self.running(vmid) else 'stopped'}")
        return 0

    def list(self) -> int:
        print(f"{'VMID':<10} {'Status':<10} {'Lock':<12} Name")
        for vmid in self.store.vmids():
            conf = self.conf(vmid)
            state = "running" if self.backend.status(vmid) == "running" else "stopped"
            print(f"{vmid:<10} {state:<10} {conf.get('lock', ''):<12} {conf.get('hostname', '')}")
        return 0


def _stdout(line: str) -> None:
    print(line, flush=True)


def _parse_set(args: list[str]) -> tuple[dict[str, str], list[str], list[str], str | None]:
    """``--key value`` / ``-key value`` pairs as PVE's CLI takes them."""
    params: dict[str, str] = {}
    delete: list[str] = []
    revert: list[str] = []
    digest = None
    it = iter(args)
    for arg in it:
        if not arg.startswith("-"):
            raise PctError("400 too many arguments\npct set <vmid> [OPTIONS]")
        key = arg.lstrip("-")
        value = next(it, None)
        if value is None:
            raise PctError(f"400 Parameter verification failed.\n{key}: missing value")
        if key == "delete":
            delete += [k for k in value.replace(";", ",").split(",") if k]
        elif key == "revert":
            revert += [k for k in value.replace(";", ",").split(",") if k]
        elif key == "digest":
            digest = value
        else:
            params[key] = value
    return params, delete, revert, digest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--root":
        print("usage: pct --root SIM_ROOT <command> ...", file=sys.stderr)
        return 255
    pct = Pct(Path(argv[1]))
    rest = argv[2:]
    if not rest or rest[0] in ("help", "-h", "--help"):
        print("USAGE: pct <COMMAND> [ARGS] [OPTIONS]\n  commands: config, exec, list, mount, "
              "pending, pull, push, set, shutdown, start, status, stop, unmount")
        return 0
    cmd, args = rest[0], rest[1:]
    try:
        if cmd == "list":
            return pct.list()
        if not args or not args[0].isdigit():
            raise PctError(f"400 not enough arguments\npct {cmd} <vmid>")
        vmid = int(args[0])
        args = args[1:]
        if cmd == "exec":
            if args and args[0] == "--":
                args = args[1:]
            return pct.exec(vmid, args)
        if cmd in ("push", "pull"):
            ap = argparse.ArgumentParser(prog=f"pct {cmd}")
            ap.add_argument("src")
            ap.add_argument("dst")
            ap.add_argument("--perms", "-perms")
            ap.add_argument("--user", "-user")
            ap.add_argument("--group", "-group")
            ns = ap.parse_args(args)
            if cmd == "push":
                return pct.push(vmid, ns.src, ns.dst, ns.perms, ns.user, ns.group)
            return pct.pull(vmid, ns.src, ns.dst)
        if cmd == "config":
            return pct.config(vmid, current="--current" in args or "-current" in args)
        if cmd == "shutdown":
            timeout = int(args[args.index("--timeout") + 1]) if "--timeout" in args else 60
            return pct.shutdown(vmid, timeout)
        if cmd == "set":
            return pct.set(vmid, *_parse_set(args))
        if cmd == "start":
            return pct.start(vmid, debug=bool({"--debug", "-debug", "--debug=1"} & set(args)))
        simple = {"mount": pct.mount, "unmount": pct.unmount, "pending": pct.pending,
                  "stop": pct.stop, "status": pct.status}
        if cmd not in simple:
            raise PctError(f"unknown command 'pct {shlex.quote(cmd)}'")
        return simple[cmd](vmid)
    except (PctError, SimTaskError) as exc:
        print(str(exc), file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(main())
