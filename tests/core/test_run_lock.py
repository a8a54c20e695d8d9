"""The run lock's names and the vmid: auto claim (issue 20, point 4), without a node.

The lock itself (flock over SSH) is exercised on the simulated node in tests/safety.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provisioner.engine.lock import ct_lock_name, new_ct_lock_name, safe_name
from provisioner.operations.container import _claim_next_vmid


def test_names_are_node_and_vmid_not_hostname() -> None:
    assert ct_lock_name("pve", 120) == "pve-ct120"
    assert new_ct_lock_name("pve", "llm") == "pve-new-llm"
    assert safe_name("pve-new-a b/c") == "pve-new-a_b_c"


@dataclass
class NextIdApi:
    """/cluster/nextid as PVE answers it: the lowest free id, which another run may take meanwhile."""

    answers: list[int]
    asked: int = 0

    def get(self, path: str, **params: Any) -> int:
        assert path == "/cluster/nextid"
        self.asked += 1
        return self.answers.pop(0)


@dataclass
class Claims:
    held: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def claim(self, vmid: int) -> None:
        self.held.append(vmid)
        self.log.append(f"claim {vmid}")

    def release(self, vmid: int) -> None:
        self.held.remove(vmid)
        self.log.append(f"release {vmid}")


@dataclass
class Actx:
    pve: NextIdApi
    state: dict[str, Any]


def test_auto_vmid_is_claimed_before_creating_and_retried_when_taken() -> None:
    # nobody else: 105 is claimed, still free, used
    claims = Claims()
    assert _claim_next_vmid(Actx(NextIdApi([105, 105]), {"lock": claims})) == 105
    assert claims.held == [105]
    # another run created 105 while we waited for its lock: give it back, take 106
    claims = Claims()
    assert _claim_next_vmid(Actx(NextIdApi([105, 106, 106]), {"lock": claims})) == 106
    assert claims.log == ["claim 105", "release 105", "claim 106"] and claims.held == [106]
    # no lock (a library caller): just the next id
    assert _claim_next_vmid(Actx(NextIdApi([107]), {})) == 107
