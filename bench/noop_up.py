"""Benchmark: a no-op `provision up` on the simulated node — round trips, API calls, wall time.

Targets (issue 2): ≤ 3 SSH round trips, ≤ 10 API calls, ≤ 2 s with a 50 ms round trip.

    sudo python bench/noop_up.py [--host-file FILE] [--runs 5] [--delay-ms 50]

Without --host-file it starts its own simulated node and converges a container with
the GPU passed through (steps container + gpu) once, then measures no-op runs of those
steps, first without and then with the injected delay on every API request and every
SSH command. With --host-file (e.g. inventories/sim.yaml after ./demo) it measures every
step of that file against the already converged node named in it.
The ratio with/without delay is the figure to watch: it says how many sequential round
trips a no-op costs. Results go to bench/results/noop_up.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.config import load  # noqa: E402
from provisioner.engine import run  # noqa: E402


def measure(host_file: Path, runs: int, only: list[str] | None) -> dict:
    loaded = load(host_file)
    samples = []
    for _ in range(runs):
        conn = run.connect(loaded.config)
        t0 = time.perf_counter()
        from provisioner.engine.lock import ContainerLock

        with ContainerLock(loaded.config, conn) as lock:
            report = run.up(loaded, conn, only=only, lock=lock)
        wall = time.perf_counter() - t0
        conn.close()
        if report.applied:
            raise SystemExit(f"not converged: {[c.summary for c in report.applied]}")
        samples.append({"wall_s": wall, "api_calls": report.api_calls, "ssh_round_trips": report.ssh_round_trips})
    return {"runs": runs, "wall_s_median": statistics.median(s["wall_s"] for s in samples),
            "wall_s_max": max(s["wall_s"] for s in samples),
            "api_calls": max(s["api_calls"] for s in samples),
            "ssh_round_trips": max(s["ssh_round_trips"] for s in samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host-file", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--delay-ms", type=int, default=50)
    args = ap.parse_args()

    from provisioner.sim.faults import Faults
    from provisioner.sim.fixture import start_sim_node
    from provisioner.sim.hostfile import write_host_file
    from provisioner.sim import manage

    node = None
    only: list[str] | None = None
    if args.host_file:
        host_file = args.host_file
        cfg = load(host_file).config
        faults = Faults(manage.sim_root("pve"))
    else:
        node = start_sim_node(name="bench")
        faults = node.faults
        host_file = write_host_file(Path(tempfile.mkdtemp()) / "bench.yaml", node.conn, vmid=190, gpu=True)
        only = ["container", "gpu"]
        loaded = load(host_file)
        conn = run.connect(loaded.config)
        run.up(loaded, conn, only=only)  # converge once
        conn.close()
    try:
        faults.clear()
        base = measure(host_file, args.runs, only)
        faults.set_api_delay(args.delay_ms)
        faults.set_ssh_delay(args.delay_ms)
        delayed = measure(host_file, args.runs, only)
    finally:
        faults.clear()
        if node is not None:
            manage.stop(node.name)
    result = {"steps": only or "all", "no_delay": base, f"delay_{args.delay_ms}ms": delayed,
              "delay_ratio": round(delayed["wall_s_median"] / base["wall_s_median"], 2),
              "targets": {"ssh_round_trips": 3, "api_calls": 10, "wall_s_at_50ms": 2.0}}
    out = Path(__file__).parent / "results" / "noop_up.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'':24}{'no delay':>12}{f'{args.delay_ms} ms RTT':>14}")
    for key in ("wall_s_median", "wall_s_max", "api_calls", "ssh_round_trips"):
        a, b = base[key], delayed[key]
        fmt = (lambda v: f"{v:.3f}") if isinstance(a, float) else str
        print(f"{key:24}{fmt(a):>12}{fmt(b):>14}")
    print(f"delay ratio (wall, median): {result['delay_ratio']}")
    ok = delayed["ssh_round_trips"] <= 3 and delayed["api_calls"] <= 10 and delayed["wall_s_median"] <= 2.0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
