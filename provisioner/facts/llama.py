"""The llama.cpp build in the container.

Fact ``ct.llama`` → :class:`LlamaBuild`: the stamp of the serving build
(``/opt/provision/llama.cpp/current/BUILD-STAMP.json``; doctor reads the CUDA
architectures from it) and the builds kept on disk.
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
    return LlamaBuild(stamp, current, binary, sorted(builds))


LLAMA_CT = Fact("ct.llama",
                f"s={ROOT}/current/BUILD-STAMP.json\n"
                "[ -f \"$s\" ] && echo \"stamp $(tr -d '\\n' < \"$s\")\"\n"
                f"echo \"current $(readlink {ROOT}/current 2>/dev/null)\"\n"
                f"echo \"binary $([ -x {ROOT}/current/bin/llama-server ] && echo 1 || echo 0)\"\n"
                f"for b in {ROOT}/builds/*/; do [ -d \"$b\" ] && b=${{b%/}} && echo \"build ${{b##*/}}\"; done\n"
                "true",
                parse_llama, where="ct")
