"""Pure snapshot logic: names, ordering, pruning (never the user's), config diffs."""

from __future__ import annotations

import calendar

from hypothesis import given, settings, strategies as st

from provisioner.config import load_text
from provisioner.engine.snapshot import NAME_RE, Snapshot, config_changes, snapshot_name, to_prune

T0 = calendar.timegm((2026, 11, 22, 3, 15, 9, 0, 0, 0))


def snap(name: str, t: int | None = None) -> Snapshot:
    return Snapshot(name=name, snaptime=t, description="")


def test_name_is_utc_timestamp_and_ours():
    name = snapshot_name(T0)
    assert name == "provision-20261122-031509"
    assert NAME_RE.match(name) and len(name) <= 40  # pve-configid maxLength


def test_name_taken_in_the_same_second_gets_a_suffix():
    first = snapshot_name(T0)
    second = snapshot_name(T0, {first})
    third = snapshot_name(T0, {first, second})
    assert (second, third) == (first + "-2", first + "-3")
    assert all(NAME_RE.match(n) for n in (second, third))


def test_prune_keeps_newest_n_of_ours_and_never_the_users():
    names = [snapshot_name(T0 + i * 3600) for i in range(5)]
    users = [snap("before-upgrade"), snap("provision-manual"), snap("provision-2026"), snap("Provision-20261122-031509")]
    gone = to_prune([snap(n) for n in reversed(names)] + users, keep=3)
    assert [s.name for s in gone] == names[:2]


def test_prune_orders_same_second_suffixes():
    a = snapshot_name(T0)
    gone = to_prune([snap(a + "-2"), snap(a), snap(a + "-10"), snap(a + "-3")], keep=2)
    assert [s.name for s in gone] == [a, a + "-2"]


@settings(max_examples=300)
@given(st.lists(st.one_of(st.integers(0, 10**9).map(lambda t: snapshot_name(t)),
                          st.text(min_size=1, max_size=20)), unique=True), st.integers(1, 6))
def test_prune_property(names, keep):
    snaps = [snap(n) for n in names]
    gone = {s.name for s in to_prune(snaps, keep)}
    ours = [n for n in names if NAME_RE.match(n)]
    assert all(NAME_RE.match(n) for n in gone)  # only ours
    assert len(ours) - len(gone) == min(keep, len(ours))  # exactly keep remain
    assert not gone or max(gone) < min(set(ours) - gone)  # the oldest go (names sort by time)


def test_config_changes_ignores_bookkeeping():
    before = {"memory": 1024, "cores": 2, "snaptime": 5, "digest": "a", "parent": "x", "dev0": "/dev/nvidia0"}
    now = {"memory": 2048, "cores": "2", "digest": "b", "dev1": "/dev/nvidiactl", "dev0": "/dev/nvidia0"}
    assert config_changes(before, now) == {"memory": (1024, 2048), "dev1": (None, "/dev/nvidiactl")}


BASE = """proxmox:
  endpoint: https://pve.example:8006
  node: pve
  auth: {token_id: "root@pam!prov", token_secret: {env: PVE_TOKEN}}
"""


def test_snapshot_settings_default_and_validation():
    cfg = load_text(BASE, "host.yaml").config
    assert cfg.container.snapshot is True and cfg.container.snapshots_keep == 3
    cfg = load_text(BASE + "container: {snapshot: false, snapshots_keep: 5}\n", "host.yaml").config
    assert cfg.container.snapshot is False and cfg.container.snapshots_keep == 5
    import pytest

    from provisioner.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        load_text(BASE + "container:\n  snapshots_keep: 0\n", "host.yaml")
    assert "container.snapshots_keep" in str(err.value) and "host.yaml:6" in str(err.value)


def test_only_changes_that_can_break_the_container_take_a_snapshot():
    """Issue 20 point 7: starting a stopped CT or loading a host module took a ~15 s snapshot."""
    from types import SimpleNamespace as C

    from provisioner.engine.snapshot import kind_of

    risky = {(s, a): kind_of(C(step=s, action=a)) for s, a in [
        ("container", "update"), ("container", "restart"), ("container", "resize"), ("driver", "install"),
        ("cuda", "install"), ("llama", "build"), ("services", "write")]}
    assert risky == {("container", "update"): "config", ("container", "restart"): "config",
                     ("container", "resize"): "config", ("driver", "install"): "driver",
                     ("cuda", "install"): "driver", ("llama", "build"): "build", ("services", "write"): "services"}
    for step, action in [("container", "start"), ("container", "create"), ("gpu.host", "create"),
                         ("gpu.host", "write"), ("model.host_dir", "create"), ("model", "download"),
                         ("resolv", "fix"), ("verify", "verify")]:
        assert kind_of(C(step=step, action=action)) is None, (step, action)


def test_prune_keeps_the_last_snapshot_before_each_kind():
    """Three config edits no longer push out the snapshot from before a driver change."""
    names = [snapshot_name(T0 + i * 3600) for i in range(6)]
    kinds = ["driver,services", "config", "build", "config", "config", "config"]
    snaps = [Snapshot(n, None, f"kinds: {k}; taken by provision") for n, k in zip(names, kinds)]
    gone = [s.name for s in to_prune(snaps, keep=2)]
    assert gone == [names[1], names[3]]  # kept: driver+services (0), build (2), the newest two (4, 5)
    assert snaps[0].kinds == {"driver", "services"}
