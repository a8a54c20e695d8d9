"""Benchmark: the llama step of a second container with the same build spec vs a cold build.

Goal (issue 16): the llama step of a new container whose build spec the Proxmox host
already keeps costs ≤ 5 % of a cold build; an unchanged spec costs 0 s (no change at all).

    sudo python bench/build_cache_bench.py [--keep-entry]

Starts its own simulated node. Container A builds llama-server's CPU backend cold: a fresh
container (empty ccache) and a build spec the host cache cannot hold yet (the test spec
plus ``-DPROVISION_BENCH_RUN=<now>``, a flag CMake only warns about). Container B, same
spec, gets it from the host cache. Then `up` of B again (unchanged spec). Figures are the
llama step's own seconds from `provision --json up` (report ``timings``), whole runs beside.
The cache entry the run made is removed at the end (``--keep-entry`` keeps it).
Results go to bench/results/build_cache.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = "container,llama"


def up(host_file: Path) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "provisioner.cli.main", "--json", "up", str(host_file), "--yes",
                           "--only", STEPS], capture_output=True, text=True, cwd=ROOT, timeout=7200,
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"provision up {host_file} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def llama(report: dict) -> tuple[list[str], float]:
    """The llama step's actions and seconds (0 when it changed nothing)."""
    actions = [c["action"] for c in report["applied"] if c["step"] == "llama"]
    return actions, float(report["timings"].get("llama", 0.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep-entry", action="store_true", help="leave this run's entry in the host cache")
    args = ap.parse_args()

    import yaml

    from provisioner.sim import assets, manage
    from provisioner.sim.fixture import start_sim_node
    from provisioner.sim.hostfile import VM_SAFE_CPU_FLAGS, write_host_file

    node = start_sim_node(name="bcache")
    tmp = Path(tempfile.mkdtemp(prefix="build-cache-bench-"))
    llama_cpp = {"backend": "cpu", "source": {"tarball": str(assets.llama_source()), "subdir": "llama.cpp"},
                 "cmake_flags": [*VM_SAFE_CPU_FLAGS, f"-DPROVISION_BENCH_RUN={int(time.time())}"]}
    files = [write_host_file(tmp / f"{name}.yaml", node.conn, vmid=vmid, gpu=False,
                             extra={"llama_cpp": llama_cpp}) for name, vmid in (("a", 191), ("b", 192))]
    key = None
    try:
        cold, cold_wall = up(files[0])
        cached, cached_wall = up(files[1])
        again, again_wall = up(files[1])
        (a_actions, a_s), (b_actions, b_s), (c_actions, c_s) = llama(cold), llama(cached), llama(again)
        if a_actions != ["build"] or b_actions != ["install"] or c_actions:
            raise SystemExit(f"unexpected llama changes: cold {a_actions}, second {b_actions}, unchanged {c_actions}")
        key = next(c["diff"]["host_cache"]["after"] for c in cached["applied"] if c["step"] == "llama")
        result = {
            "spec": llama_cpp, "host_cache_key": key,
            "cold_build_llama_step_s": round(a_s, 1), "cold_up_wall_s": round(cold_wall, 1),
            "second_container_llama_step_s": round(b_s, 1), "second_container_up_wall_s": round(cached_wall, 1),
            "ratio": round(b_s / a_s, 4), "target_ratio": 0.05,
            "unchanged_spec_llama_step_s": c_s, "unchanged_spec_up_wall_s": round(again_wall, 2),
        }
    finally:
        for f in files:
            subprocess.run([sys.executable, "-m", "provisioner.cli.main", "down", str(f), "--yes"], cwd=ROOT,
                           capture_output=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
        if key and not args.keep_entry:
            node.run(f"rm -f /var/cache/provision/llama-builds/{key}.json /var/cache/provision/llama-builds/{key}.tar")
        manage.stop(node.name)
    out = ROOT / "bench" / "results" / "build_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(yaml.safe_dump(result, sort_keys=False))
    ok = result["ratio"] <= 0.05 and result["unchanged_spec_llama_step_s"] == 0
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
