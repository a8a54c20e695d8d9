"""Which host driver branch runs which GPUs, and which CUDA level a driver gives (as data).

NVIDIA's support windows (release notes of each branch; the open kernel module's README):

- 470 is the last branch for Kepler (compute capability 3.x).
- 580 is the last branch for Maxwell, Pascal and Volta (5.x, 6.x, 7.0): 590 and later need
  Turing (7.5) or newer.
- The open kernel module runs Turing (7.5) and newer only; Blackwell (10.x, 12.x) runs *only*
  on the open module.
- A GPU generation needs a minimum branch too (Hopper 525, Blackwell 570, GB10 580).

The CUDA level a driver gives is the newest toolkit whose own minimum driver it meets
(``cuda_matrix.TOOLKITS``); a host driver must run the toolkit a managed container builds
with, by its own minimum or by minor-version compatibility (``cuda_matrix.driver_supports``).
"""

from __future__ import annotations

import re

from .cuda_matrix import TOOLKITS, vtuple

#: (first branch that no longer supports it, lowest compute capability of the generation, name)
DROPPED: list[tuple[int, str, str, str]] = [
    (390, "2.0", "3.0", "Fermi"),
    (475, "3.0", "5.0", "Kepler"),
    (590, "5.0", "7.5", "Maxwell, Pascal and Volta"),
]
#: compute capability (major.minor prefix) -> (first branch that supports it, generation)
INTRODUCED: dict[str, tuple[int, str]] = {
    "8.9": (520, "Ada"), "9.0": (525, "Hopper"), "10.0": (570, "Blackwell"), "12.0": (570, "Blackwell"),
    "12.1": (580, "Blackwell (GB10)"),
}
OPEN_MIN_CC = "7.5"
VERSION_RE = re.compile(r"^\d{3}\.\d{1,3}(\.\d{1,3})?$")
LATEST_RE = re.compile(r"^latest-(\d{3})$")


def branch(version: str) -> int:
    return int(version.split(".")[0])


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def gpu_problem(version: str, flavour: str, name: str, cc: str | None) -> str | None:
    """Why driver ``version`` (``flavour``) cannot run this GPU, or None."""
    if cc is None:
        return None  # unknown: nvidia-smi of an old driver and a name we do not know; let it be
    b, c = branch(version), cc_tuple(cc)
    for dropped, low, high, gen in DROPPED:
        if cc_tuple(low) <= c < cc_tuple(high) and b >= dropped:
            last = {390: 390, 475: 470, 590: 580}[dropped]
            return (f"{name} (compute capability {cc}, {gen}) is not supported by the {b} branch: "
                    f"{last} is the last branch for {gen}")
    first = INTRODUCED.get(cc)
    if first and b < first[0]:
        return f"{name} (compute capability {cc}, {first[1]}) needs the {first[0]} branch or newer"
    if flavour == "open" and c < cc_tuple(OPEN_MIN_CC):
        return (f"{name} (compute capability {cc}) cannot use the open kernel module (Turing, 7.5, or newer "
                "only): use flavour: proprietary")
    if flavour == "proprietary" and c >= (10, 0):
        return f"{name} (compute capability {cc}, Blackwell) runs only on the open kernel module: use flavour: open"
    return None


def cuda_level(version: str) -> str | None:
    """The newest CUDA toolkit driver ``version`` supports (None: older than every known one)."""
    fits = [t for t, floor in TOOLKITS.items() if vtuple(version) >= vtuple(floor)]
    return max(fits, key=vtuple) if fits else None


def resolve(spec: str, available: list[str]) -> str | None:
    """``595.71.05`` or ``latest-595`` → a version from ``available`` (bare versions), None if absent."""
    m = LATEST_RE.match(spec)
    if m:
        hits = [v for v in available if v.split(".")[0] == m.group(1)]
        return max(hits, key=vtuple) if hits else None
    return spec if spec in available else None
