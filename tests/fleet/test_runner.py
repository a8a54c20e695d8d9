"""The parallel runner: bounded workers, one host's failure isolated, one node at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from provisioner.errors import ProxmoxError
from provisioner.fleet.inventory import Host, load_inventory
from provisioner.fleet.runner import Events, run_fleet

FP = ":".join(["AB"] * 32)


def inventory(tmp_path: Path, nodes: list[str]) -> list[Host]:
    """One host per entry of ``nodes`` (each a separate endpoint unless names repeat)."""
    lines = ["defaults:", "  version: 1", "  proxmox:", f"    fingerprint: \"{FP}\"", "    node: pve1",
             "    auth: {token_id: provision@pve!ci, token_secret: {env: PVE_TOKEN_SECRET}}", "hosts:"]
    for i, endpoint in enumerate(nodes):
        lines += [f"  h{i}:", f"    proxmox: {{endpoint: 'https://{endpoint}:8006'}}",
                  f"    container: {{vmid: {100 + i}, hostname: llm-{i}}}"]
    f = tmp_path / "fleet.yaml"
    f.write_text("\n".join(lines) + "\n")
    return list(load_inventory(f).hosts)


class Probe:
    """A job that sleeps and records how many hosts (and which nodes) ran at once."""

    def __init__(self, hosts: list[Host], seconds: float = 0.2, fail: dict[str, Exception] | None = None) -> None:
        self._hosts = hosts
        self.seconds = seconds
        self.fail = fail or {}
        self.lock = threading.Lock()
        self.running: list[str] = []
        self.peak = 0
        self.overlap_same_node = False

    def __call__(self, host: Host, events: Events) -> str:
        with self.lock:
            if any(h.pve_key == host.pve_key for h in self._hosts if h.name in self.running):
                self.overlap_same_node = True
            self.running.append(host.name)
            self.peak = max(self.peak, len(self.running))
        events.status("working")
        try:
            time.sleep(self.seconds)
            if host.name in self.fail:
                raise self.fail[host.name]
            return f"done {host.name}"
        finally:
            with self.lock:
                self.running.remove(host.name)


def test_workers_bound_the_hosts_running_at_once(tmp_path: Path) -> None:
    hosts = inventory(tmp_path, [f"n{i}.example" for i in range(6)])
    probe = Probe(hosts, 0.3)
    t0 = time.monotonic()
    results = run_fleet(hosts, probe, workers=2)
    elapsed = time.monotonic() - t0
    assert probe.peak == 2
    assert 0.85 < elapsed < 2.0  # 6 hosts, 2 at a time, 0.3 s each: 3 rounds
    assert [r.value for r in results] == [f"done h{i}" for i in range(6)]
    assert all(r.state == "done" and r.seconds >= 0.3 for r in results)


def test_all_hosts_run_in_parallel_when_workers_allow(tmp_path: Path) -> None:
    hosts = inventory(tmp_path, [f"n{i}.example" for i in range(5)])
    probe = Probe(hosts, 0.4)
    t0 = time.monotonic()
    run_fleet(hosts, probe, workers=8)
    assert probe.peak == 5 and time.monotonic() - t0 < 1.2


def test_one_failure_and_one_bug_do_not_stop_the_others(tmp_path: Path) -> None:
    hosts = inventory(tmp_path, [f"n{i}.example" for i in range(4)])
    probe = Probe(hosts, 0.1, fail={"h1": ProxmoxError("cannot reach the Proxmox API", host="n1.example",
                                                fix="check proxmox.endpoint"),
                             "h2": KeyError("oops")})
    seen: list[tuple[str, str]] = []
    results = run_fleet(hosts, probe, workers=4, notify=lambda r, kind, text: seen.append((r.name, kind)))
    by = {r.name: r for r in results}
    assert by["h0"].state == by["h3"].state == "done"
    assert by["h1"].failed and by["h1"].error_kind == "ProxmoxError"
    assert by["h1"].error == "host n1.example: cannot reach the Proxmox API\n  fix: check proxmox.endpoint"
    assert by["h1"].error_summary == "host n1.example: cannot reach the Proxmox API"
    assert by["h2"].failed and by["h2"].error_kind == "internal"
    assert by["h2"].error.startswith("internal error: 'oops' (traceback in ")
    # every host reported its start, its status and its end
    for name in ("h0", "h1", "h2", "h3"):
        assert [k for n, k in seen if n == name] == ["start", "status", "end"]


def test_containers_on_one_node_run_one_after_the_other(tmp_path: Path) -> None:
    # h0, h1 and h3 share a node; h2 is elsewhere
    hosts = inventory(tmp_path, ["a.example", "a.example", "b.example", "a.example"])
    probe = Probe(hosts, 0.25)
    t0 = time.monotonic()
    results = run_fleet(hosts, probe, workers=8)
    assert not probe.overlap_same_node
    assert probe.peak == 2
    assert 0.7 < time.monotonic() - t0 < 1.3
    starts = {r.name: r.started for r in results}
    assert starts["h0"] < starts["h1"] < starts["h3"]  # inventory order within the node


def test_secrets_are_masked_in_errors(tmp_path: Path) -> None:
    from provisioner.redact import register

    hosts = inventory(tmp_path, ["a.example"])
    secret = register("s3cr3t-value-xyz")
    probe = Probe(hosts, 0.0, fail={"h0": ProxmoxError(f"login failed with {secret}")})
    (r,) = run_fleet(hosts, probe, workers=1)
    assert secret not in (r.error or "") and "********" in (r.error or "")


def test_stop_ends_running_hosts_at_their_next_step_and_skips_the_rest(tmp_path: Path) -> None:
    hosts = inventory(tmp_path, ["a.example", "a.example", "b.example"])
    stop = threading.Event()

    def job(host: Host, events: Events) -> None:
        for i in range(100):
            events.status(f"step {i}")
            time.sleep(0.05)

    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    results = run_fleet(hosts, job, workers=4, stop=stop)
    assert time.monotonic() - t0 < 1.5
    by = {r.name: r for r in results}
    assert by["h0"].failed and by["h2"].failed
    assert by["h0"].error == "interrupted; every step is safe to re-run"
    assert by["h1"].state == "queued"  # after h0 on the same node: never started
