"""Finished llama-server builds kept on the Proxmox host, so each build spec compiles once per host.

An entry is ``/var/cache/provision/llama-builds/<key>.tar`` (the contents of
``builds/<hash>/``: ``bin/`` and ``BUILD-STAMP.json``) plus ``<key>.json`` (what the key
was made of and the packages whose libraries the build links), the JSON written last,
so an entry without it is never used. The key is the build's own hash (source, backend,
architectures, toolkit, flags: ``BuildSpec.hash``) together with the container's OS
release, the machine type and the host CPU's flags (``GGML_NATIVE`` code runs only on
the CPU it was made for). Entries travel over the channel every step uses: SSH to the
host, ``pct exec`` into the container, a tar stream on stdin/stdout.

After a build, the llama step stores it; a new or re-created container with the same
key gets it unpacked into ``builds/<hash>.tmp``, its runtime packages installed, then
the same ``--version`` / ``ldd`` checks as a fresh build before ``current`` flips. An
entry that fails them is removed and the container builds after all.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time

from ..backends import template_os
from ..engine.context import ApplyContext, PlanContext
from ..facts.llama import (
    HOST_CACHE_DIR,
    LLAMA_CT,
    LLAMA_HOST_CACHE,
    HostBuildCache,
    LlamaBuild,
)
from .llama_build import BUILDS, BuildSpec

#: entries kept on the host (newest use first); each is one build (tens of MB for CPU, more for CUDA)
KEEP = 8
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def container_os(ctx: PlanContext) -> str | None:
    """The container's OS release: read in it when it runs, else from the template it is created from."""
    have: LlamaBuild | None = ctx.fact(LLAMA_CT.name)
    if have is not None and have.os_release:
        return have.os_release
    if ctx.pve.ct is None:
        return template_os(ctx.cfg.container.template)
    return None  # an existing container that does not run yet: known once it does


def cache_key(spec: BuildSpec, os_release: str, host: HostBuildCache) -> str:
    body = {"build": spec.hash, "os": os_release, "machine": host.machine, "cpu": host.cpu_flags}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def lookup(ctx: PlanContext, spec: BuildSpec) -> tuple[str | None, bool]:
    """(the key of this build on this host, whether the host holds it); (None, False) when the cache is
    off or the key cannot be told yet."""
    host: HostBuildCache | None = ctx.fact(LLAMA_HOST_CACHE.name)
    os_release = container_os(ctx)
    if not ctx.cfg.llama_cpp.host_cache or host is None or not host.machine or not os_release:
        return None, False
    key = cache_key(spec, os_release, host)
    return key, key in host.keys


def _entry(key: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", key):
        raise ValueError(f"not a cache key: {key!r}")
    return f"{HOST_CACHE_DIR}/{key}"


def push(actx: ApplyContext, spec: BuildSpec, key: str) -> list[str] | None:
    """Unpack the entry into the container's ``builds/<hash>.tmp``; its runtime packages, or None when the
    host no longer holds it (or the stream failed)."""
    e = _entry(key)
    stage = f"{BUILDS}/{spec.hash}.tmp"
    unpack = f"rm -rf {shlex.quote(stage)} && mkdir -p {shlex.quote(stage)} && tar -xf - -C {shlex.quote(stage)}"
    script = (f"set -euo pipefail\n[ -s {e}.tar ] && [ -s {e}.json ] || exit 4\n"
              f"touch {e}.json\n"  # the newest use is kept longest
              f"pct exec {actx.vmid} -- sh -c {shlex.quote(unpack)} < {e}.tar\n"
              f"cat {e}.json\n")
    result = actx.ssh.run("bash -s", stdin=script.encode())
    if not result.ok:
        actx.log(f"host cache entry {key}: not pushed (exit {result.exit_code}) {result.stderr.strip()[-300:]}")
        return None
    try:
        meta = json.loads(result.stdout)
    except ValueError:
        actx.log(f"host cache entry {key}: unreadable {e}.json")
        return None
    return [p for p in meta.get("runtime_packages", []) if isinstance(p, str) and _PACKAGE.match(p)]


def forget(actx: ApplyContext, key: str) -> None:
    e = _entry(key)
    actx.ssh.run("bash -s", stdin=f"rm -f {e}.json {e}.tar\n".encode())


_RUNTIME = """set -e
b={bin}
ldd "$b/llama-server" "$b"/*.so* 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\\// {{print $3}}' | sort -u |
while read -r f; do dpkg -S "$f" 2>/dev/null || dpkg -S "$(readlink -f "$f")" 2>/dev/null || true; done |
cut -d: -f1 | sort -u
"""


def store(actx: ApplyContext, spec: BuildSpec, key: str, os_release: str, build_seconds: float) -> bool:
    """Keep the build that now serves in the container as entry ``key``; False (logged) when that failed.
    A failure never fails the run: the container serves either way, the next container just builds."""
    bindir = f"{BUILDS}/{spec.hash}/bin"
    found = actx.ct().run(_RUNTIME.format(bin=shlex.quote(bindir)))
    runtime = sorted(p for p in found.stdout.split() if _PACKAGE.match(p)) if found.ok else []
    meta = json.dumps({"key": key, "os": os_release, "stamp": spec.stamp(), "runtime_packages": runtime,
                       "build_seconds": round(build_seconds, 1), "stored": int(time.time())}, sort_keys=True)
    e = _entry(key)
    pack = f"tar -cf - -C {shlex.quote(f'{BUILDS}/{spec.hash}')} ."
    script = (f"set -euo pipefail\nmkdir -p {HOST_CACHE_DIR}\ntmp={HOST_CACHE_DIR}/.{key}.$$\n"
              "trap 'rm -f \"$tmp.tar\" \"$tmp.json\"' EXIT\n"
              f"pct exec {actx.vmid} -- sh -c {shlex.quote(pack)} > \"$tmp.tar\"\n"
              f"cat > \"$tmp.json\" <<'__PROVISION_META__'\n{meta}\n__PROVISION_META__\n"
              f"mv \"$tmp.tar\" {e}.tar && mv \"$tmp.json\" {e}.json\n"
              # prune the entries used longest ago, and leftovers of interrupted stores
              f"ls -1t {HOST_CACHE_DIR}/*.json | tail -n +{KEEP + 1} | while read -r j; do "
              "rm -f \"$j\" \"${j%.json}.tar\"; done\n"
              f"find {HOST_CACHE_DIR} -maxdepth 1 -name '.*.*' -mmin +120 -delete\n")
    result = actx.ssh.run("bash -s", stdin=script.encode())
    if not result.ok:
        actx.log(f"could not keep build {spec.hash} in the host cache {HOST_CACHE_DIR}: "
                 f"{result.stderr.strip()[-300:]}")
        return False
    actx.log(f"build {spec.hash} kept in the host cache as {key} (runtime packages: {' '.join(runtime) or 'none'})")
    return True
