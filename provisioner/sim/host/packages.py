"""The simulated host's package manager, DKMS, kernel modules and reboot.

Inside the sim namespace (see ``sim/host.py``) an overlay on /usr/bin and /usr/sbin puts
these fakes over the real tools, so nothing run over the sim host's SSH can change this
machine's packages, load a module or reboot it:

| tool | answers |
| --- | --- |
| apt-get | update (reads the CUDA source's ``Packages`` over HTTP, needs its ``signed-by`` keyring), install [-s] [--allow-downgrades] [--allow-change-held-packages] name[=ver]..., remove/purge, download |
| apt-cache | policy, madison, show |
| apt-mark | hold, unhold, showhold |
| dpkg | -i (the keyring .deb: files under the shadowed /etc/apt and /usr/share/keyrings are written), -l; read-only options go to the real dpkg |
| dpkg-query | -W [-f] for the sim host's package database |
| dkms | status; build -m nvidia -v VER -k KVER --dkmstree D --sourcetree S (a trial build that changes nothing) |
| modprobe, rmmod | nvidia, nvidia_uvm (refused while a running CT holds /dev/nvidia*) |
| update-initramfs | -u [-k all] |
| shutdown, poweroff, halt, dpkg-divert | ``shutdown -r`` reboots; the rest is refused (never the real ones) |
| reboot | stops every CT, drops SSH (sessions are refused while it "boots"), loaded module := the one DKMS installed for the running kernel, nvidia_uvm only when modules-load.d or the boot unit loads it, ``/run/provision-reboot-*`` markers gone (a real reboot empties /run), the enabled units ordered
``Before=pve-guests.service`` run (sim/host/bootunits.py), ``onboot`` CTs started; counts boots in ``pkg/boots`` |

State (under ``SIM_ROOT/host/pkg``): ``status.json`` (installed packages: version, dpkg state,
hold), ``lists.json`` (what ``apt-get update`` fetched), ``dkms.json`` (built modules per driver
version and kernel), ``dkms-broken`` (fault: ``VERSION KVER`` lines whose build fails). The
Proxmox repository (kernels, ``proxmox-headers-<kver>``, Debian's ``dkms``) is always known.
A DKMS build fails like the real one: ``Error! Bad return status for module build on kernel``
and a post-installation script error from dpkg; the loaded module never changes before a reboot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from provisioner.sim.host.nvidia import NvidiaHost

REAL_DPKG = "/usr/bin/dpkg.real-provision-sim"  # the real dpkg, reachable inside the namespace
DEBIAN_DKMS = "3.0.10-8+deb12u1"
#: shadowed tools: (directory, name)
TOOLS = [("bin", "lspci"), ("bin", "apt"), ("bin", "dpkg-divert"), ("sbin", "shutdown"), ("sbin", "poweroff"),
         ("sbin", "halt"), ("bin", "apt-get"), ("bin", "apt-cache"), ("bin", "apt-mark"), ("bin", "dpkg"),
         ("bin", "dpkg-query"), ("sbin", "dkms"), ("sbin", "modprobe"), ("sbin", "rmmod"),
         ("sbin", "update-initramfs"), ("sbin", "reboot"), ("bin", "mokutil")]


# -- Debian version comparison -----------------------------------------------------------------------

def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"^[^\d]*", a).group(0)  # type: ignore[union-attr]
        nb = re.match(r"^[^\d]*", b).group(0)  # type: ignore[union-attr]
        for i in range(max(len(na), len(nb))):
            x = _order(na[i]) if i < len(na) else 0
            y = _order(nb[i]) if i < len(nb) else 0
            if x != y:
                return -1 if x < y else 1
        a, b = a[len(na):], b[len(nb):]
        da = re.match(r"^\d*", a).group(0)  # type: ignore[union-attr]
        db = re.match(r"^\d*", b).group(0)  # type: ignore[union-attr]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
        a, b = a[len(da):], b[len(db):]
    return 0


def vercmp(a: str, b: str) -> int:
    """dpkg's version order: -1, 0, 1."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), up, rev
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


# -- state --------------------------------------------------------------------------------------------

class Host:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "host" / "pkg"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nv = NvidiaHost(self.root)

    def _load(self, name: str, default: object) -> dict:
        p = self.dir / name
        return json.loads(p.read_text()) if p.exists() else default  # type: ignore[return-value]

    def _save(self, name: str, data: object) -> None:
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.rename(self.dir / name)

    @property
    def status(self) -> dict[str, dict]:
        return self._load("status.json", {})

    def set_status(self, st: dict[str, dict]) -> None:
        self._save("status.json", st)

    @property
    def dkms(self) -> dict[str, dict[str, str]]:
        return self._load("dkms.json", {})

    def kernels(self) -> list[str]:
        st = self.nv.load()
        return [st.running_kernel] + ([st.newer_kernel] if st.newer_kernel else [])

    @property
    def secureboot(self) -> dict:
        """``{"enabled": bool, "enrolled": [sha256 of DER keys], "pending": [...]}`` (fault-injected)."""
        return self._load("secureboot.json", {"enabled": False, "enrolled": [], "pending": []})

    def module_loads(self) -> bool:
        """Whether the kernel would load a DKMS-built module: only unsigned-OK (Secure Boot off) or
        signed with DKMS's key (/var/lib/dkms/mok.pub, dkms.in v3.0.10:953-970) once enrolled."""
        sb = self.secureboot
        if not sb["enabled"]:
            return True
        key = Path("/var/lib/dkms/mok.pub")
        return key.is_file() and _sha(key) in sb["enrolled"]

    def broken(self, version: str, kver: str) -> bool:
        p = self.dir / "dkms-broken"
        lines = p.read_text().split("\n") if p.exists() else []
        return f"{version} {kver}" in lines

    # the universe: {name: [ {Version, Depends, Filename, repo}, ... ]}
    def available(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for kver in self.kernels():
            ver = kver.removesuffix("-pve")
            out[f"proxmox-headers-{kver}"] = [{"Version": ver, "repo": "http://download.proxmox.com/debian/pve",
                                               "Depends": ""}]
            out[f"proxmox-kernel-{kver}-signed"] = [{"Version": ver, "repo": "http://download.proxmox.com/debian/pve",
                                                     "Depends": ""}]
        # Proxmox's headers metapackage follows the default kernel series: it depends on the headers
        # of the newest kernel the Proxmox repository offers (here: the newest this node knows), so
        # the kernel the next `apt full-upgrade` brings gets headers, and DKMS a build, with it
        newest = self.kernels()[-1]
        out["proxmox-default-headers"] = [{"Version": "1.1.0", "repo": "http://download.proxmox.com/debian/pve",
                                           "Depends": f"proxmox-headers-{newest}"}]
        out.setdefault("dkms", []).append({"Version": DEBIAN_DKMS, "repo": "http://deb.debian.org/debian",
                                           "Depends": ""})
        for name, entries in self._load("lists.json", {}).items():
            out.setdefault(name, []).extend(entries)
        return out

    def pins(self) -> list[tuple[list[str], str, int]]:
        """(package selectors, version glob, priority) from /etc/apt/preferences.d (the shadowed one).

        Selectors are names with ``*`` globs or ``src:NAME[:any]`` (every binary of that source),
        as apt_preferences(5) allows; only version pins are read (the ones the driver uses).
        """
        pins = []
        d = Path("/etc/apt/preferences.d")
        for f in sorted(d.glob("*")) if d.is_dir() else []:
            if f.suffix not in ("", ".pref") or not f.is_file():
                continue
            for block in f.read_text().split("\n\n"):
                kv = dict(ln.split(":", 1) for ln in block.splitlines() if ":" in ln and not ln.startswith("#"))
                kv = {k.strip(): v.strip() for k, v in kv.items()}
                if "Package" in kv and kv.get("Pin", "").startswith("version "):
                    pins.append((kv["Package"].split(), kv["Pin"][8:].strip(), int(kv.get("Pin-Priority", 500))))
        return pins

    @staticmethod
    def _selects(selector: str, name: str, entry: dict[str, str]) -> bool:
        if selector.startswith("src:"):
            src = selector[4:].removesuffix(":any")
            return (entry.get("Source") or name) == src
        return re.fullmatch(re.escape(selector).replace(r"\*", ".*"), name) is not None

    def priority(self, name: str, entry: dict[str, str]) -> int:
        """apt's pin priority of one version: the highest matching version pin, else 500."""
        prios = [prio for sels, vglob, prio in self.pins()
                 if any(self._selects(s, name, entry) for s in sels)
                 and re.fullmatch(re.escape(vglob).replace(r"\*", ".*"), entry["Version"])]
        return max(prios) if prios else 500

    def candidate(self, name: str) -> str | None:
        entries = self.available().get(name, [])
        if not entries:
            return None
        best = max(entries, key=lambda e: (self.priority(name, e), _Key(e["Version"])))
        return best["Version"]

    def entry(self, name: str, version: str) -> dict[str, str] | None:
        return next((e for e in self.available().get(name, []) if e["Version"] == version), None)


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Key:
    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: _Key) -> bool:
        return vercmp(self.v, other.v) < 0

    def __gt__(self, other: _Key) -> bool:
        return vercmp(self.v, other.v) > 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and vercmp(self.v, other.v) == 0


def _say(*lines: str) -> None:
    for ln in lines:
        print(ln, flush=True)


def _err(*lines: str) -> None:
    for ln in lines:
        print(ln, file=sys.stderr, flush=True)


# -- apt-get ------------------------------------------------------------------------------------------

def _sources() -> list[tuple[str, str]]:
    """(url, keyring) of every deb line in the (shadowed) /etc/apt/sources.list.d/*.list."""
    out = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.list")):
        for ln in f.read_text().splitlines():
            m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", ln.strip())
            if m:
                opts = m.group(1) or ""
                key = re.search(r"signed-by=(\S+?)[\]\s]", opts + " ")
                out.append((m.group(2).rstrip("/") + "/" + m.group(3).strip("/"), key.group(1) if key else ""))
    return out


def _parse_packages(text: str, url: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for block in text.split("\n\n"):
        kv: dict[str, str] = {}
        for ln in block.splitlines():
            if ":" in ln and not ln.startswith(" "):
                k, v = ln.split(":", 1)
                kv[k] = v.strip()
        if "Package" in kv:
            out.setdefault(kv["Package"], []).append(
                {"Version": kv["Version"], "Depends": kv.get("Depends", ""), "repo": url,
                 "Filename": kv.get("Filename", ""), "Source": kv.get("Source", "").split(" ")[0],
                 "Provides": kv.get("Provides", ""), "Conflicts": kv.get("Conflicts", "")})
    return out


def apt_update(h: Host) -> int:
    lists: dict[str, list[dict[str, str]]] = {}
    n = 0
    for kver_url in ("http://download.proxmox.com/debian/pve bookworm InRelease",
                     "http://deb.debian.org/debian bookworm InRelease"):
        n += 1
        _say(f"Hit:{n} {kver_url}")
    for url, keyring in _sources():
        n += 1
        if not keyring or not Path(keyring).is_file():
            _say(f"Get:{n} {url}/ InRelease [1581 B]")
            _say(f"Err:{n} {url}/ InRelease",
                 "  The following signatures couldn't be verified because the public key is not available: "
                 "NO_PUBKEY A4B469963BF863CC")
            _err(f"E: The repository '{url}/ InRelease' is not signed.")
            return 100
        try:
            text = urllib.request.urlopen(url + "/Packages", timeout=10).read().decode()
        except OSError as exc:
            _say(f"Err:{n} {url}/ InRelease", f"  Could not connect to {url}: {exc}")
            _err(f"W: Failed to fetch {url}/InRelease  Could not connect")
            continue
        _say(f"Get:{n} {url}/ InRelease [1581 B]", f"Get:{n + 1} {url}/ Packages [{len(text) // 1024} kB]")
        n += 1
        for name, entries in _parse_packages(text, url).items():
            lists.setdefault(name, []).extend(entries)
    h._save("lists.json", lists)
    _say("Reading package lists...")
    return 0


Dep = tuple[str, str | None, str | None, str]  # (name, operator, version, the relation as written)


def _deps(depends: str) -> list[Dep]:
    """The first alternative of each relation: ``libcuda1 (= 580.95.05-1)`` → (name, "=", version, text)."""
    out = []
    for alt in filter(None, (d.strip() for d in depends.split(","))):
        first = alt.split("|")[0].strip()
        m = re.match(r"^([^\s(]+)\s*(?:\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?", first)
        if m:
            out.append((m.group(1), m.group(2), m.group(3), first))
    return out


def _satisfies(version: str, op: str | None, want: str | None) -> bool:
    if op is None or want is None:
        return True
    c = vercmp(version, want)
    return {"=": c == 0, ">=": c >= 0, "<=": c <= 0, ">>": c > 0, "<<": c < 0}[op]


def _resolve(h: Host, wanted: list[tuple[str, str | None]]) -> tuple[dict[str, str], str | None]:
    """{name: version} to install (requested + missing or unsatisfied dependencies).

    Like apt, a dependency is satisfied by what is installed or else by the package's *candidate*
    only: a strict ``(= X)`` whose candidate is another version (say an unpinned newer one) fails
    with apt's "Depends: ... but Y is to be installed", it never picks a non-candidate version.
    """
    status = h.status
    plan: dict[str, str] = {}
    queue: list[tuple[str, str | None, str | None, str, str]] = [
        (n, "=" if v else None, v, "", "") for n, v in wanted]
    explicit = {n for n, _ in wanted}
    while queue:
        name, op, ver, parent, text = queue.pop(0)
        inst = status.get(name, {})
        if name in plan:
            if not _satisfies(plan[name], op, ver):
                return {}, (f"E: Unable to correct problems, you have held broken packages.\n"
                            f" {parent} : Depends: {text} but {plan[name]} is to be installed")
            continue
        if name not in explicit:
            if inst.get("state", "").startswith("ii") and _satisfies(inst["version"], op, ver):
                continue
            chosen = h.candidate(name)
            if chosen is None:
                return {}, (f"E: Unable to correct problems, you have held broken packages.\n"
                            f" {parent} : Depends: {text} but it is not installable")
            if not _satisfies(chosen, op, ver):
                return {}, (f"E: Unable to correct problems, you have held broken packages.\n"
                            f" {parent} : Depends: {text} but {chosen} is to be installed")
        else:
            chosen = ver if op == "=" else h.candidate(name)
            if chosen is None:
                if not h.available().get(name):
                    return {}, f"E: Unable to locate package {name}"
                return {}, f"E: Package '{name}' has no installation candidate"
        entry = h.entry(name, chosen)
        if entry is None:
            return {}, f"E: Version '{chosen}' for '{name}' was not found"
        plan[name] = chosen
        queue += [(n, o, v, name, t) for n, o, v, t in _deps(entry.get("Depends", ""))]
    return plan, None


def _conflicting(h: Host, plan: dict[str, str]) -> list[str]:
    """Installed packages a planned one Conflicts with (by name or by what they Provide), as dpkg
    removes them for a package that also Replaces them (NVIDIA's pinning packages share one file)."""
    status, out = h.status, []
    for n, v in plan.items():
        conflicts = {c for c, *_ in _deps((h.entry(n, v) or {}).get("Conflicts", ""))}
        for other, st in status.items():
            if other == n or other in plan or not conflicts:
                continue
            provides = {c for c, *_ in _deps(st.get("provides", ""))}
            if other in conflicts or provides & conflicts:
                out.append(other)
    return out


def apt_install(h: Host, args: list[str], *, simulate: bool, downgrades: bool, change_held: bool) -> int:
    wanted = [(a.split("=", 1)[0], a.split("=", 1)[1] if "=" in a else None) for a in args]
    plan, error = _resolve(h, wanted)
    _say("Reading package lists...", "Building dependency tree...", "Reading state information...")
    if error:
        _err(error)
        return 100
    status = h.status
    plan = {n: v for n, v in plan.items()
            if not (status.get(n, {}).get("version") == v and status[n].get("state") == "ii")}
    held = [n for n in plan if status.get(n, {}).get("held")]
    down = [n for n, v in plan.items() if n in status and vercmp(v, status[n]["version"]) < 0]
    if not plan:
        _say("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.")
        return 0
    if simulate:
        for n, v in plan.items():
            old = f"[{status[n]['version']}] " if n in status else ""
            _say(f"Inst {n} {old}({v} {h.entry(n, v)['repo']} [amd64])")  # type: ignore[index]
        for n, v in plan.items():
            _say(f"Conf {n} ({v} [amd64])")
        return 0
    if held and not change_held:
        _say("The following held packages will be changed:", "  " + " ".join(held))
        _err("E: Held packages were changed and -y was used without --allow-change-held-packages.")
        return 100
    if down and not downgrades:
        _say("The following packages will be DOWNGRADED:", "  " + " ".join(down))
        _err("E: Packages were downgraded and -y was used without --allow-downgrades.")
        return 100
    new = [n for n in plan if n not in status]
    gone = _conflicting(h, plan)
    _say(f"{len(plan) - len(new) - len(down)} upgraded, {len(new)} newly installed, {len(down)} downgraded, "
         f"{len(gone)} to remove and 0 not upgraded.")
    if gone:
        apt_remove(h, gone)
        status = h.status
    for n, v in plan.items():
        _say(f"Unpacking {n} ({v}){' over (' + status[n]['version'] + ')' if n in status else ''} ...")
        if n.startswith(("nvidia-kernel-open-dkms", "nvidia-kernel-dkms")) and n in status:
            _dkms_remove(h, status[n]["version"].rsplit("-", 1)[0])
        status[n] = {"version": v, "state": "iU", "held": status.get(n, {}).get("held", False),
                     "provides": (h.entry(n, v) or {}).get("Provides", "")}
        status[n]["files"] = _unpack_files(h, n, v)
    h.set_status(status)
    failed = []
    for n, v in plan.items():
        _say(f"Setting up {n} ({v}) ...")
        ok = True
        if n in ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"):
            ok = _dkms_postinst(h, v.rsplit("-", 1)[0], open_module=n == "nvidia-kernel-open-dkms")
        if n.startswith("proxmox-headers-") and ok:
            _dkms_autoinstall(h, n.removeprefix("proxmox-headers-"))
        status = h.status
        status[n]["state"] = "ii" if ok else "iF"
        h.set_status(status)
        if not ok:
            _err(f"dpkg: error processing package {n} (--configure):",
                 f" installed {n} package post-installation script subprocess returned error exit status 10")
            failed.append(n)
    if failed:
        _err("Errors were encountered while processing:", *[f" {n}" for n in failed],
             "E: Sub-process /usr/bin/dpkg returned an error code (1)")
        return 100
    return 0


def _unpack_files(h: Host, name: str, version: str) -> list[str]:
    """Files of packages the sim tracks for real: apt preferences (NVIDIA's pinning packages ship
    /etc/apt/preferences.d/nvidia-driver-pin). Returns the paths written."""
    if not name.startswith("nvidia-driver-pinning-"):
        return []
    entry = h.entry(name, version) or {}
    if not entry.get("Filename"):
        return []
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        deb = _fetch_deb(h, entry, Path(tmp))
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp + "/x"], check=True)
        for f in sorted((Path(tmp) / "x/etc/apt/preferences.d").glob("*")):
            dest = Path("/etc/apt/preferences.d") / f.name
            dest.write_text(f.read_text())
            written.append(str(dest))
    return written


def _fetch_deb(h: Host, entry: dict[str, str], dest: Path) -> Path:
    url = entry["repo"].rstrip("/") + "/" + entry["Filename"].removeprefix("./")
    out = dest / url.rsplit("/", 1)[1]
    out.write_bytes(urllib.request.urlopen(url, timeout=20).read())
    return out


def apt_remove(h: Host, names: list[str]) -> int:
    status = h.status
    for n in names:
        if n not in status:
            _say(f"Package '{n}' is not installed, so not removed")
            continue
        _say(f"Removing {n} ({status[n]['version']}) ...")
        for f in status[n].get("files", []):
            Path(f).unlink(missing_ok=True)
        if n in ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"):
            _dkms_remove(h, status[n]["version"].rsplit("-", 1)[0])
        del status[n]
    h.set_status(status)
    return 0


def apt_download(h: Host, args: list[str]) -> int:
    for i, a in enumerate(args, 1):
        name, _, ver = a.partition("=")
        ver = ver or h.candidate(name) or ""
        entry = h.entry(name, ver)
        if entry is None or not entry.get("Filename"):
            _err(f"E: Can't find a source to download version '{ver}' of '{name}:amd64'")
            return 100
        _fetch_deb(h, entry, Path.cwd())
        _say(f"Get:{i} {entry['repo']} {name} {ver} [12.3 MB]")
    return 0


def apt_get(h: Host, argv: list[str]) -> int:
    flags: list[str] = []
    words: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("-o", "-c", "-t", "--option", "--config-file", "--target-release"):
            next(it, None)  # its value
        elif a.startswith("-"):
            flags.append(a)
        else:
            words.append(a)
    simulate = any(f in ("-s", "--simulate", "--dry-run") for f in flags)
    if not words:
        _err("E: Invalid operation")
        return 100
    cmd, rest = words[0], words[1:]
    if cmd == "update":
        return apt_update(h)
    if cmd == "install":
        removes = [a[:-1] for a in rest if a.endswith("-") and "=" not in a]
        rest = [a for a in rest if not (a.endswith("-") and "=" not in a)]
        if removes and not simulate:
            apt_remove(h, removes)
        return apt_install(h, rest, simulate=simulate, downgrades="--allow-downgrades" in flags,
                           change_held="--allow-change-held-packages" in flags)
    if cmd in ("remove", "purge"):
        return apt_remove(h, rest)
    if cmd == "download":
        return apt_download(h, rest)
    _err(f"E: Invalid operation {cmd}")
    return 100


def apt_cache(h: Host, argv: list[str]) -> int:
    cmd, names = (argv[0], argv[1:]) if argv else ("", [])
    avail, status = h.available(), h.status
    if cmd == "policy":
        for n in names:
            if n not in avail and n not in status:
                _err(f"N: Unable to locate package {n}")
                continue
            inst = status.get(n, {}).get("version", "(none)")
            _say(f"{n}:", f"  Installed: {inst}", f"  Candidate: {h.candidate(n) or '(none)'}", "  Version table:")
            for e in sorted(avail.get(n, []), key=lambda e: _Key(e["Version"]), reverse=True):
                mark = " *** " if e["Version"] == inst else "     "
                _say(f"{mark}{e['Version']} 500", f"        500 {e['repo']}  Packages")
        return 0
    if cmd == "madison":
        for n in names:
            for e in sorted(avail.get(n, []), key=lambda e: _Key(e["Version"]), reverse=True):
                _say(f"{n:>24} | {e['Version']:>12} | {e['repo']}  Packages")
        return 0
    if cmd == "show":
        for n in names:
            if n not in avail:
                _err("E: No packages found")
                return 100
            for e in avail[n]:
                _say(f"Package: {n}", f"Version: {e['Version']}", f"Depends: {e.get('Depends', '')}", "")
        return 0
    _err(f"E: Invalid operation {cmd}")
    return 100


def apt_mark(h: Host, argv: list[str]) -> int:
    cmd, names = (argv[0], argv[1:]) if argv else ("", [])
    status = h.status
    if cmd == "showhold":
        _say(*sorted(n for n, p in status.items() if p.get("held")))
        return 0
    for n in names:
        if n not in status:
            _err(f"E: Unable to locate package {n}")
            return 100
        status[n]["held"] = cmd == "hold"
        _say(f"{n} set on hold." if cmd == "hold" else f"Canceled hold on {n}.")
    h.set_status(status)
    return 0


# -- dpkg ---------------------------------------------------------------------------------------------

#: only these (shadowed) places receive files from `dpkg -i`
WRITABLE = ("/etc/apt/", "/usr/share/keyrings/")


def dpkg(h: Host, argv: list[str]) -> int:
    if argv and argv[0] in ("-i", "--install"):
        status = h.status
        for deb in argv[1:]:
            info = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version"], capture_output=True, text=True,
                                  check=False)
            if info.returncode != 0:
                _err(f"dpkg: error processing archive {deb} (--install):", info.stderr.strip())
                return 1
            fields = dict(ln.split(": ", 1) for ln in info.stdout.splitlines() if ": " in ln)
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
                for f in Path(tmp).rglob("*"):
                    dest = "/" + str(f.relative_to(tmp))
                    if f.is_file() and dest.startswith(WRITABLE):
                        Path(dest).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(f, dest)
            _say(f"Selecting previously unselected package {fields['Package']}.",
                 f"Unpacking {fields['Package']} ({fields['Version']}) ...",
                 f"Setting up {fields['Package']} ({fields['Version']}) ...")
            status[fields["Package"]] = {"version": fields["Version"], "state": "ii", "held": False}
        h.set_status(status)
        return 0
    if argv and argv[0] in ("-l", "--list"):
        for n, p in sorted(h.status.items()):
            _say(f"{p['state']}  {n:<30} {p['version']:<20} amd64        (provision-sim)")
        return 0
    if argv and argv[0] in ("-r", "--remove", "-P", "--purge", "--configure", "--unpack", "-a"):
        _err("dpkg: (provision-sim) only -i is simulated; use apt-get")
        return 2
    os.execv(REAL_DPKG, ["dpkg", *argv])  # read-only queries (--print-architecture, --compare-versions)
    return 0


def dpkg_query(h: Host, argv: list[str]) -> int:
    fmt = "${Package}\t${Version}\n"
    names: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("-f", "--showformat"):
            fmt = next(it)
        elif a.startswith(("-f", "--showformat=")):
            fmt = a.split("=", 1)[1] if a.startswith("--") else a[2:].removeprefix("=")
        elif a in ("-W", "--show"):
            continue
        else:
            names.append(a)
    status = h.status
    rc = 0
    for pat in names or ["*"]:
        hits = sorted(n for n in status if re.fullmatch(pat.replace("*", ".*"), n))
        if not hits:
            _err(f"dpkg-query: no packages found matching {pat}")
            rc = 1
        for n in hits:
            p = status[n]
            abbrev = ("h" if p.get("held") else "i") + p["state"][1] + " "
            out = (fmt.replace("${Package}", n).replace("${Version}", p["version"])
                   .replace("${db:Status-Abbrev}", abbrev)
                   .replace("${Status}", ("hold" if p.get("held") else "install") + " ok " +
                            {"i": "installed", "F": "half-configured", "U": "unpacked"}[p["state"][1]]))
            sys.stdout.write(out.encode().decode("unicode_escape"))
    return rc


# -- dkms ---------------------------------------------------------------------------------------------

def _headers(h: Host, kver: str) -> bool:
    return h.status.get(f"proxmox-headers-{kver}", {}).get("state") == "ii"


def _build(h: Host, version: str, kver: str) -> int:
    """One build's output and exit code, like dkms 3."""
    if not _headers(h, kver):
        _err(f"Error! Your kernel headers for kernel {kver} cannot be found at /lib/modules/{kver}/build or "
             f"/lib/modules/{kver}/source.",
             f"Please install the linux-headers-{kver} package or use the --kernelsourcedir option to tell DKMS "
             "where it's located.")
        return 21
    _say("Cleaning build area...",
         f"'make' -j16 NV_EXCLUDE_BUILD_MODULES='' KERNEL_UNAME={kver} modules....")
    time.sleep(0.2)
    if h.broken(version, kver):
        _err(f"Error! Bad return status for module build on kernel: {kver} (x86_64)",
             f"Consult /var/lib/dkms/nvidia/{version}/build/make.log for more information.")
        return 10
    _say("Cleaning build area...")
    return 0


def _record(h: Host, version: str, kver: str, state: str | None) -> None:
    d = h.dkms
    if state is None:
        d.get(version, {}).pop(kver, None)
    else:
        d.setdefault(version, {})[kver] = state
    h._save("dkms.json", {v: k for v, k in d.items() if k})
    _sync_modules(h)


def _sync_modules(h: Host) -> None:
    """The on-disk module markers follow what DKMS installed (one version at a time)."""
    st = h.nv.load()
    d = h.dkms
    running = [v for v, k in d.items() if k.get(st.running_kernel) == "installed"]
    st.ondisk_driver = running[0] if running else ("" if not st.driver else st.ondisk_driver)
    if running and running[0] == st.driver:
        st.ondisk_driver = ""
    if not running and st.driver:
        st.ondisk_driver = "none"
    if st.newer_kernel:
        st.newer_kernel_has_module = any(k.get(st.newer_kernel) == "installed" for k in d.values())
    h.nv.save(st)
    h.nv.refresh(st)


def _dkms_postinst(h: Host, version: str, *, open_module: bool) -> bool:
    kernels = h.kernels()
    _say(f"Loading new nvidia-{version} DKMS files...", f"Building for {' and '.join(kernels)}")
    _record(h, version, kernels[0], "added")
    for kver in kernels:
        if not _headers(h, kver):
            _say(f"Module build for kernel {kver} was skipped since the kernel headers for this kernel do not "
                 "seem to be installed.")
            continue
        _say(f"Building initial module for {kver}")
        if _build(h, version, kver) != 0:
            return False
        _record(h, version, kver, "installed")
        _say("Done.", "", "nvidia.ko:", "Running module version sanity check.", " - Original module",
             "   - No original module exists within this kernel", " - Installation",
             f"   - Installing to /lib/modules/{kver}/updates/dkms/")
    return True


def _dkms_autoinstall(h: Host, kver: str) -> None:
    """The headers' postinst hook: build every added DKMS module for the new kernel headers."""
    for version in list(h.dkms):
        if h.dkms[version].get(kver) != "installed" and _build(h, version, kver) == 0:
            _record(h, version, kver, "installed")


def _dkms_remove(h: Host, version: str) -> None:
    _say(f"Deleting module nvidia-{version} completely from the DKMS tree.")
    d = h.dkms
    d.pop(version, None)
    h._save("dkms.json", d)
    _sync_modules(h)


def dkms(h: Host, argv: list[str]) -> int:
    if not argv or argv[0] == "status":
        # dkms 3.0.10's do_status (dkms.in:1774-1788): "<m>/<v>, <k>, <a>: installed" and, after it,
        # what module_status_built_extra (:1715-1731) adds, e.g. " (WARNING! Diff between built and
        # installed module!)" (fault file dkms-warn: the line carries that warning)
        warn = " (WARNING! Diff between built and installed module!)" if (h.dir / "dkms-warn").exists() else ""
        for version, kernels in sorted(h.dkms.items()):
            for kver, state in sorted(kernels.items()):
                _say(f"nvidia/{version}, {kver}, x86_64: {state}{warn}" if state == "installed" else
                     f"nvidia/{version}: added")
        return 0
    opts: dict[str, str] = {}
    it = iter(argv[1:])
    for a in it:
        if a in ("-m", "-v", "-k", "--dkmstree", "--sourcetree"):
            opts[a] = next(it, "")
        elif "/" in a and "-m" not in opts:
            opts["-m"], _, opts["-v"] = a.partition("/")
    if argv[0] == "build":
        version, kver = opts.get("-v", ""), opts.get("-k", "")
        src = Path(opts.get("--sourcetree", "/usr/src")) / f"{opts.get('-m', 'nvidia')}-{version}" / "dkms.conf"
        if not src.is_file():
            _err("Error! Could not find module source directory.", f"Directory: {src.parent} does not exist.")
            return 2
        _say(f"Sign command: /lib/modules/{kver}/build/scripts/sign-file", "", "Building module:")
        return _build(h, version, kver)
    _err(f"Error! Unknown action: {argv[0]} (provision-sim dkms: status, build)")
    return 4


# -- mokutil -----------------------------------------------------------------------------------------

def mokutil(h: Host, argv: list[str]) -> int:
    """``--sb-state``, ``--test-key FILE``, ``--import FILE`` with mokutil's messages
    (lcp/mokutil src/mokutil.c at 9ae73db1: 1458-1466, 1561, 1589, 823, 826)."""
    sb = h.secureboot
    if argv[:1] == ["--sb-state"]:
        _say("SecureBoot enabled" if sb["enabled"] else "SecureBoot disabled")
        return 0 if sb["enabled"] else 1
    if len(argv) == 2 and argv[0] in ("--test-key", "-t", "--import", "-i"):
        key = Path(argv[1])
        if not key.is_file():
            _err(f"Failed to read {argv[1]}")
            return 255 if argv[0] in ("--test-key", "-t") else 1
        digest = _sha(key)
        if digest in sb["enrolled"]:
            _say(f"{argv[1]} is already enrolled")
            return 0
        if argv[0] in ("--test-key", "-t"):
            if digest in sb["pending"]:
                _say(f"{argv[1]} is already in the enrollment request")
                return 0
            _say(f"{argv[1]} is not enrolled")
            return 1
        sb["pending"] = sorted(set(sb["pending"]) | {digest})  # MokManager enrols it at the next boot
        h._save("secureboot.json", sb)
        return 0
    _err("mokutil: (provision-sim) only --sb-state, --test-key FILE and --import FILE are simulated")
    return 2


# -- modules, initramfs, reboot -----------------------------------------------------------------------

def _gpu_cts_running(h: Host) -> list[int]:
    from provisioner.sim.lxc.backend import LxcBackend
    from provisioner.sim.pve.conf import ConfStore

    store, backend, out = ConfStore(h.root), LxcBackend(h.root), []
    for vmid in backend.running_vmids():
        conf = store.load(vmid).values if store.exists(vmid) else {}
        if any(k.startswith("dev") and "/dev/nvidia" in v for k, v in conf.items()):
            out.append(vmid)
    return out


def modprobe(h: Host, argv: list[str]) -> int:
    remove = "-r" in argv or "--remove" in argv
    mods = [a.replace("-", "_") for a in argv if not a.startswith("-")]
    st = h.nv.load()
    if remove:
        return rmmod(h, mods)
    for m in mods:
        if m not in ("nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm"):
            _err(f"modprobe: FATAL: Module {m} not found in directory /lib/modules/{st.running_kernel}")
            return 1
        if not st.driver:
            ondisk = st.ondisk_driver if st.ondisk_driver not in ("", "none") else ""
            if not ondisk:
                _err(f"modprobe: FATAL: Module {m} not found in directory /lib/modules/{st.running_kernel}")
                return 1
            if not h.module_loads():
                _err(f"modprobe: ERROR: could not insert '{m}': Key was rejected by service")
                return 1
            st.driver, st.ondisk_driver = ondisk, ""
        if m == "nvidia_uvm":
            st.uvm_loaded = True
    h.nv.save(st)
    h.nv.refresh(st)
    return 0


def rmmod(h: Host, mods: list[str]) -> int:
    st = h.nv.load()
    busy = _gpu_cts_running(h)
    for m in mods:
        if m == "nvidia_uvm":
            if busy:
                _err("rmmod: ERROR: Module nvidia_uvm is in use")
                return 1
            st.uvm_loaded = False
        elif m == "nvidia":
            if busy or st.uvm_loaded:
                _err(f"rmmod: ERROR: Module nvidia is in use{' by: nvidia_uvm' if st.uvm_loaded else ''}")
                return 1
            st.ondisk_driver = st.ondisk_driver or st.driver
            st.driver = ""
    h.nv.save(st)
    h.nv.remove_nodes()
    h.nv.refresh(st)
    return 0


def update_initramfs(h: Host, argv: list[str]) -> int:
    kernels = h.kernels() if "all" in argv else [h.nv.load().running_kernel]
    for kver in kernels:
        _say(f"update-initramfs: Generating /boot/initrd.img-{kver}")
    (h.dir / "initramfs").write_text(json.dumps({"at": time.time(), "kernels": kernels}))
    return 0


def lspci(h: Host, argv: list[str]) -> int:
    """The simulated GPUs as ``lspci -nn`` shows them (only NVIDIA devices exist on this bus)."""
    for g in h.nv.load().gpus:
        bus = g.bus_id.split(":", 1)[1].lower() if g.bus_id.count(":") == 2 else g.bus_id
        model = g.name.removeprefix("NVIDIA ")
        _say(f"{bus} VGA compatible controller [0300]: NVIDIA Corporation Device [{model}] [10de:2684] (rev a1)")
    return 0


def uvm_at_boot() -> bool:
    files = [Path("/etc/modules"), *sorted(Path("/etc/modules-load.d").glob("*.conf"))]
    for f in files:
        if f.is_file() and re.search(r"^\s*nvidia[-_]uvm\s*$", f.read_text(), re.MULTILINE):
            return True
    return False


def reboot(h: Host, argv: list[str]) -> int:
    """Returns at once, like `reboot` over SSH; a detached worker does the 'boot'."""
    with open(h.root / "log" / "reboot.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "provisioner.sim.host.packages", "--root", str(h.root), "reboot-worker"],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                         env={**os.environ})
    return 0


def reboot_worker(h: Host) -> int:
    from provisioner.sim.host.faults import Faults
    from provisioner.sim.lxc.backend import LxcBackend
    from provisioner.sim.pve.conf import ConfStore

    marker = h.root / "run" / "rebooting"
    time.sleep(0.5)
    marker.write_text(str(time.time()))
    backend, store = LxcBackend(h.root), ConfStore(h.root)
    for vmid in backend.running_vmids():
        backend.stop(vmid, lambda _: None)
    Faults(h.root).drop_ssh_connections()
    st = h.nv.load()
    sb = h.secureboot
    if sb["pending"]:  # MokManager at this boot: the requested keys are enrolled
        sb["enrolled"], sb["pending"] = sorted(set(sb["enrolled"]) | set(sb["pending"])), []
        h._save("secureboot.json", sb)
    installed = [v for v, k in h.dkms.items() if k.get(st.running_kernel) == "installed"]
    if installed and not h.module_loads():
        # Secure Boot: the kernel rejects the DKMS-built module (not signed by an enrolled key)
        st.driver, st.ondisk_driver = "", installed[0]
    elif installed:
        st.driver, st.ondisk_driver = installed[0], ""
    elif st.ondisk_driver not in ("", "none"):
        st.driver, st.ondisk_driver = st.ondisk_driver, ""
    elif st.ondisk_driver == "none":
        st.driver, st.ondisk_driver = "", ""
    boot_unit = Path("/etc/systemd/system/multi-user.target.wants/provision-nvidia-uvm.service").exists()
    st.uvm_loaded = bool(st.driver) and (uvm_at_boot() or boot_unit)
    h.nv.remove_nodes()
    h.nv.save(st)
    if st.driver:
        h.nv.refresh(st)
    else:
        h.nv.refresh(st)
        h.nv.remove_nodes()
    # a reboot empties /run (tmpfs): the sim shares this machine's /run, so it removes only the
    # markers `provision host --reboot` leaves there to see the reboot happen
    for marker_file in Path("/run").glob("provision-reboot-*"):
        marker_file.unlink(missing_ok=True)
    boots = h.dir / "boots"
    boots.write_text(str(int(boots.read_text()) + 1 if boots.exists() else 1) + "\n")
    time.sleep(1.0)
    marker.unlink(missing_ok=True)
    from provisioner.sim.host.bootunits import run_before_guests

    with open(h.root / "log" / "boot-units.log", "a") as units_log:
        run_before_guests(lambda line: print(line, file=units_log, flush=True))
    for vmid in sorted(v for v in _all_vmids(h) if store.load(v).values.get("onboot") == "1"):
        subprocess.run([str(h.root / "host" / "bin" / "pct"), "start", str(vmid)], capture_output=True, check=False)
    return 0


def _all_vmids(h: Host) -> list[int]:
    d = h.root / "etc" / "pve" / "lxc"
    return [int(p.stem) for p in d.glob("*.conf") if p.stem.isdigit()]


# -- entry --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="provision-sim-hostpkg")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("tool")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args(argv)
    h = Host(ns.root)
    tools = {"apt-get": apt_get, "apt": apt_get, "apt-cache": apt_cache, "apt-mark": apt_mark, "dpkg": dpkg,
             "dpkg-query": dpkg_query, "dkms": dkms, "modprobe": modprobe,
             "rmmod": lambda h, a: rmmod(h, [x.replace("-", "_") for x in a if not x.startswith("-")]),
             "update-initramfs": update_initramfs, "reboot": reboot, "lspci": lspci, "mokutil": mokutil}
    if ns.tool == "reboot-worker":
        return reboot_worker(h)
    if ns.tool == "shutdown" and any(a in ("-r", "--reboot") for a in ns.args):
        return reboot(h, ns.args)
    if ns.tool in ("shutdown", "poweroff", "halt", "dpkg-divert"):
        _err(f"{ns.tool}: (provision-sim) refused: the simulated host only reboots (`reboot`, `shutdown -r`)"
             if ns.tool != "dpkg-divert" else "dpkg-divert: (provision-sim) refused: diversions are not simulated")
        return 1
    return tools[ns.tool](h, ns.args)


if __name__ == "__main__":
    sys.exit(main())
