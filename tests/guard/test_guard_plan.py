"""The host guard planned from facts, and its transaction being `up`'s (no sim node needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gpu.planctx import ctx, host_facts

from provisioner.facts.guard import GUARD, SNIPPET_VOLID, GuardState, parse_guard
from provisioner.operations import guard
from provisioner.operations.driver import PIN_PATH, pin_text, userspace_lib

PKGS = ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1"]


def converged(c) -> GuardState:
    files = {p: guard._sha(t) for p, (t, _) in guard.host_files().items()}
    cts = {f"ct-120.{k}": guard._sha(v) for k, v in guard.ct_files(c).items()}
    return GuardState(files=files, unit_enabled=True, ct_files=cts)


def test_the_guard_writes_the_pin_up_writes(tmp_path: Path) -> None:
    """nv_write_pin (what the guard runs) leaves exactly the pin `up` plans and compares against."""
    pin = tmp_path / "pin"
    lib = userspace_lib(PKGS).replace(PIN_PATH, str(pin))
    subprocess.run(["bash", "-c", lib + "ver=580.105.08\nnv_write_pin\n"], check=True)
    assert pin.read_text() == pin_text("580.105.08", PKGS)
    assert "`" not in pin.read_text().replace("`apt upgrade`", "")  # the template's own quote survived intact


def test_sync_script_is_the_prelude_and_ups_transaction() -> None:
    c = ctx(host_facts())
    sync = guard.ct_files(c)["sync.sh"]
    assert userspace_lib(PKGS) in sync and sync.rstrip().endswith("nv_sync")
    subprocess.run(["bash", "-n"], input=sync.encode(), check=True)


def test_converged_guard_plans_nothing_and_a_changed_mode_rewrites_the_ct_file() -> None:
    c = ctx(host_facts())
    c.facts[GUARD.name] = converged(c)
    assert guard.host_changes(c) == [] and guard.ct_changes(c) == []
    r = ctx(host_facts(), extra="driver:\n  follow_host: refuse\n")
    r.facts[GUARD.name] = converged(c)
    assert [ch.summary for ch in guard.ct_changes(r)] == [
        "host guard files for this container (driver.follow_host=refuse)"]


def test_hookscript_follows_the_mode_and_a_foreign_one_is_not_ours() -> None:
    assert guard.hookscript_keys(ctx(host_facts())).desired == {"hookscript": SNIPPET_VOLID}
    off = guard.hookscript_keys(ctx(host_facts(), extra="driver:\n  follow_host: \"off\"\n"))
    assert off.desired == {} and off.owns("hookscript", SNIPPET_VOLID)
    assert not off.owns("hookscript", "local:snippets/someone-elses.sh")
    # no GPU on the host: no guard
    assert guard.hookscript_keys(ctx(host_facts(gpus=[]))).desired == {}


def test_a_users_own_hookscript_is_never_replaced() -> None:
    """Issue 17: a CT holds one hookscript; with the guard on, up used to plan ours over the user's."""
    import pytest

    from provisioner.errors import RefusedError

    theirs = {"hookscript": "local:snippets/backup-notify.pl"}
    with pytest.raises(RefusedError) as e:
        guard.hookscript_keys(ctx(host_facts(), config=theirs))
    assert "own hookscript local:snippets/backup-notify.pl" in str(e.value)
    assert "driver.follow_host: off" in str(e.value) and "pct set 120 --delete hookscript" in str(e.value)
    # with the guard off, theirs is left as it is (not ours, so not removed)
    off = guard.hookscript_keys(ctx(host_facts(), extra="driver:\n  follow_host: \"off\"\n", config=theirs))
    assert off.desired == {}
    # ours already set: converged, no refusal
    mine = guard.hookscript_keys(ctx(host_facts(), config={"hookscript": SNIPPET_VOLID}))
    assert mine.desired == {"hookscript": SNIPPET_VOLID}


def test_guard_fact_parses_pending_reboot_and_log() -> None:
    st = parse_guard("file /usr/local/sbin/provision-guard abc\nct ct-120.conf 11\nenabled 1\n"
                     "pending ondisk=580.105.08 loaded=580.95.05\nlog 2026-12-03T17:53:59Z boot: x\n", 0)
    assert st.pending == ("580.105.08", "580.95.05") and st.ct_vmids() == [120] and st.unit_enabled
    assert st.log_tail == ["2026-12-03T17:53:59Z boot: x"]
    assert parse_guard("pending \n", 0).pending is None
