"""Benchmark: a no-op `provision up` on the simulated node, timed as the user waits for it.

Targets (issue 2, issue 20 point 15): ≤ 3 SSH round trips, ≤ 10 API calls, ≤ 2 s of *process*
wall time with a 50 ms round trip — Python's start, the imports, the host file, connecting,
the run lock and its release included, exactly what `time provision up FILE --yes` shows.

    sudo python bench/noop_up.py [--host-file FILE] [--runs 5] [--delay-ms 50]

Without --host-file it starts its own simulated node and converges a container with the
GPU passed through (steps container + gpu) once, then measures no-op runs of those steps
(each a fresh `provision --json up FILE --yes` process), first without and then with the
injected delay on every API request and every SSH command. With --host-file (e.g.
inventories/sim.yaml after ./demo) it measures every step of that file against the already
converged node named in it. Per run it records the process wall time measured here, and
what the process itself reports (`wall_seconds`; start-up, lock and run in `timings`).
The ratio with/without delay says how many sequential round trips a no-op costs.
Results go to bench/results/noop_up.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provisioner.config import load  # noqa: E402
from provisioner.engine import run  # noqa: E402


def one_run(host_file: Path, only: list[str] | None) -> dict:
    """One `provision up` process; its wall time from here, its own figures from its --json report."""
    cmd = [sys.executable, "-m", "provisioner.cli.main", "--json", "up", str(host_file), "--yes"]
    if only:
        cmd += ["--only", ",".join(only)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"provision up exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["applied"]:
        raise SystemExit(f"not converged: {[c['summary'] for c in report['applied']]}")
    t = report.get("timings", {})
    return {"wall_s": wall, "reported_wall_s": report.get("wall_seconds"), "startup_s": t.get("startup"),
            "lock_s": t.get("lock"), "run_s": report["seconds"], "api_calls": report["api_calls"],
            "ssh_round_trips": report["ssh_round_trips"]}


def measure(host_file: Path, runs: int, only: list[str] | None) -> dict:
    samples = [one_run(host_file, only) for _ in range(runs)]

    def med(key: str) -> float | None:
        vals = [s[key] for s in samples if s[key] is not None]
        return round(statistics.median(vals), 3) if vals else None

    return {"runs": runs, "wall_s_median": med("wall_s"), "wall_s_max": round(max(s["wall_s"] for s in samples), 3),
            "reported_wall_s_median": med("reported_wall_s"), "startup_s_median": med("startup_s"),
            "lock_s_median": med("lock_s"), "run_s_median": med("run_s"),
            "api_calls": max(s["api_calls"] for s in samples),
            "ssh_round_trips": max(s["ssh_round_trips"] for s in samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host-file", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--delay-ms", type=int, default=50)
    args = ap.parse_args()

    from provisioner.sim import manage
    from provisioner.sim.fixture import start_sim_node
    from provisioner.sim.host.faults import Faults
    from provisioner.sim.hostfile import write_host_file

    node = None
    only: list[str] | None = None
    if args.host_file:
        host_file = args.host_file
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
              "load_average": os.getloadavg()[0],
              "targets": {"ssh_round_trips": 3, "api_calls": 10, "process_wall_s_at_50ms": 2.0}}
    out = Path(__file__).parent / "results" / "noop_up.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'':26}{'no delay':>12}{f'{args.delay_ms} ms RTT':>14}")
    for key in ("wall_s_median", "wall_s_max", "reported_wall_s_median", "startup_s_median", "lock_s_median",
                "run_s_median", "api_calls", "ssh_round_trips"):
        a, b = base[key], delayed[key]
        fmt = (lambda v: f"{v:.3f}") if isinstance(a, float) else str
        print(f"{key:26}{fmt(a):>12}{fmt(b):>14}")
    print(f"delay ratio (wall, median): {result['delay_ratio']}; load average {result['load_average']:.1f}")
    ok = delayed["ssh_round_trips"] <= 3 and delayed["api_calls"] <= 10 and delayed["wall_s_median"] <= 2.0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
