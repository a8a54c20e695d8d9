"""Which GPUs the other containers on this node already have (for GPU exclusivity).

Read in the same SSH round trip as every other host fact: the main section of each
``/etc/pve/lxc/*.conf`` of the node (PVE's per-node view; in a cluster it is the
symlink to ``/etc/pve/nodes/<node>/lxc``), only the lines that matter — hostname,
tags, the description's comment lines (our ownership marker lives there) and every
``devN`` that passes ``/dev/nvidiaN``. Snapshot sections (``[name]``) are skipped:
a snapshot's devN is not in use.

Stable name: ``pve.gpu_claims`` → ``list[GpuClaim]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .base import Fact
from .pve import has_marker

_DEV = re.compile(r"^dev\d+$")
_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")


@dataclass(frozen=True)
class GpuClaim:
    """One container's hold on one GPU (``/dev/nvidia<minor>``)."""

    vmid: int
    hostname: str
    minor: int
    #: the container carries our ownership marker (tag + description line)
    managed: bool


def _dev_path(value: str) -> str:
    first = value.split(",", 1)[0]
    return first.removeprefix("path=")


def parse_claims(output: str, code: int) -> list[GpuClaim]:
    """``VMID LINE`` pairs (LINE as in the config file) → the GPU claims, by vmid then minor."""
    configs: dict[int, dict[str, str]] = {}
    for line in output.splitlines():
        vmid, _, rest = line.partition(" ")
        if not vmid.isdigit() or not rest:
            continue
        conf = configs.setdefault(int(vmid), {})
        if rest.startswith("#"):
            conf["description"] = conf.get("description", "") + unquote(rest[1:]) + "\n"
            continue
        key, sep, value = rest.partition(":")
        if sep:
            conf[key.strip()] = value.strip()
    claims: list[GpuClaim] = []
    for vmid in sorted(configs):
        conf = configs[vmid]
        minors = sorted({int(m.group(1)) for k, v in conf.items() if _DEV.match(k)
                         for m in [_GPU_NODE.match(_dev_path(v))] if m})
        claims += [GpuClaim(vmid, conf.get("hostname", ""), minor, has_marker(conf)) for minor in minors]
    return claims


CLAIMS = Fact("pve.gpu_claims",
              "for f in /etc/pve/lxc/*.conf; do [ -e \"$f\" ] || continue\n"
              "  v=${f##*/}; v=${v%.conf}\n"
              "  awk -v v=\"$v\" '/^\\[/ {exit} /^#/ || /^(hostname|tags):/ || "
              "/^dev[0-9]+:[ \\t]*(path=)?\\/dev\\/nvidia[0-9]+([, \\t]|$)/ {print v \" \" $0}' \"$f\"\n"
              "done\ntrue",
              parse_claims)
