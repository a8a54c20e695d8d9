"""The llama.cpp build in the container, and the finished builds kept on the host.

Fact ``ct.llama`` → :class:`LlamaBuild`: the stamp of the serving build
(``/opt/provision/llama.cpp/current/BUILD-STAMP.json``; doctor reads the CUDA
architectures from it), the builds kept on disk and the container's OS release.

Fact ``host.llama_cache`` → :class:`HostBuildCache`: the complete entries of the host's
build cache (``/var/cache/provision/llama-builds/<key>.{tar,json}``, see
``operations/llama_cache.py``), the host's machine type and a hash of its CPU's flags
(``GGML_NATIVE`` builds are only right on the CPU they were built on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .base import Fact

ROOT = "/opt/provision/llama.cpp"


@dataclass(frozen=True)
class LlamaBuild:
    #: the parsed BUILD-STAMP.json of `current`, None when there is no build
    stamp: dict[str, Any] | None = None
    #: `current` points at builds/<this>
    current: str | None = None
    #: current/bin/llama-server exists and is executable
    binary: bool = False
    builds: list[str] = field(default_factory=list)
    #: the container's ``$ID $VERSION_ID`` from /etc/os-release, e.g. "debian 12"
    os_release: str | None = None

    @property
    def hash(self) -> str | None:
        return str(self.stamp.get("hash")) if self.stamp else None

    @property
    def architectures(self) -> list[str]:
        return list(self.stamp.get("architectures", [])) if self.stamp else []


def parse_llama(output: str, code: int) -> LlamaBuild:
    stamp = None
    current = None
    binary = False
    builds: list[str] = []
    os_release = None
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "stamp" and rest.strip():
            try:
                stamp = json.loads(rest)
            except ValueError:
                stamp = None
        elif word == "current" and rest.strip():
            current = rest.strip().rsplit("/", 1)[-1]
        elif word == "binary":
            binary = rest.strip() == "1"
        elif word == "build" and rest.strip():
            builds.append(rest.strip())
        elif word == "os" and rest.strip():
            os_release = " ".join(rest.split())
    return LlamaBuild(stamp, current, binary, sorted(builds), os_release)


LLAMA_CT = Fact("ct.llama",
                f"s={ROOT}/current/BUILD-STAMP.json\n"
                "[ -f \"$s\" ] && echo \"stamp $(tr -d '\\n' < \"$s\")\"\n"
                f"echo \"current $(readlink {ROOT}/current 2>/dev/null)\"\n"
                f"echo \"binary $([ -x {ROOT}/current/bin/llama-server ] && echo 1 || echo 0)\"\n"
                f"for b in {ROOT}/builds/*/; do [ -d \"$b\" ] && b=${{b%/}} && echo \"build ${{b##*/}}\"; done\n"
                "(. /etc/os-release 2>/dev/null && echo \"os $ID $VERSION_ID\")\n"
                "true",
                parse_llama, where="ct")

HOST_CACHE_DIR = "/var/cache/provision/llama-builds"


@dataclass(frozen=True)
class HostBuildCache:
    #: keys of complete entries (both ``<key>.tar`` and ``<key>.json`` present)
    keys: frozenset[str] = frozenset()
    #: ``uname -m`` of the host (its containers share its kernel)
    machine: str = ""
    #: sha256 of the first ``flags`` line of /proc/cpuinfo (first 16 hex digits)
    cpu_flags: str = ""


def parse_host_cache(output: str, code: int) -> HostBuildCache:
    keys: set[str] = set()
    machine = cpu = ""
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "entry" and rest:
            keys.add(rest)
        elif word == "machine":
            machine = rest
        elif word == "cpu":
            cpu = rest[:16]
    return HostBuildCache(frozenset(keys), machine, cpu)


LLAMA_HOST_CACHE = Fact("host.llama_cache",
                        f"for j in {HOST_CACHE_DIR}/*.json; do k=${{j%.json}}; "
                        "[ -s \"$j\" ] && [ -s \"$k.tar\" ] && echo \"entry ${k##*/}\"; done\n"
                        "echo \"machine $(uname -m)\"\n"
                        "echo \"cpu $(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-16)\"\n"
                        "true",
                        parse_host_cache, where="host")
