"""`provision bench` end to end on the simulated node: real LXC, systemd units, SSH and `pct exec`.

One privileged CT with the SmolLM2 model, llama-server (the cached static CPU build laid
out as the llama step does) and the gateway, brought up with the real CLI; then the
real CLI measures it and writes the report. Slow-ish (container + gateway venv + a
minute of CPU inference): it is the only test of the CLI path (connect, find the CT,
one `pct exec` round trip, report, --out, --json).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from services.llama_bin import install_script, llama_server

from provisioner.sim import assets
from provisioner.sim.hostfile import host_data
from provision_cli import provision_cli

pytestmark = [pytest.mark.sim, pytest.mark.timeout(2400)]
VMID = 189
MODELS_DIR = Path("/var/lib/provision-bench-test") / f"models-{os.getpid()}"
REPO = Path(__file__).resolve().parents[2]


def provision(*args: str, src: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return provision_cli(*args, timeout=timeout, pythonpath=src)


def test_bench_through_the_cli(sim_node, tmp_path) -> None:
    # a snapshot of the code: an edit in the shared tree meanwhile must not re-deploy the gateway
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "provisioner", src / "provisioner", ignore=ignore)
    shutil.copytree(REPO / "templates", src / "templates", ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    (src / "README.md").write_text("snapshot\n")
    data = host_data(sim_node.conn, vmid=VMID, gpu=False, extra={
        "llama_cpp": {"backend": "cpu", "source": {"tarball": str(assets.llama_source())}},
        "model": {"path": str(assets.smollm2_model()), "name": "smollm2", "host_dir": str(MODELS_DIR)},
        "server": {"ctx_size": 32768, "threads": 2, "health_timeout": 300,
                   "override_kv": ["llama.context_length=int:32768"]},
    })
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        provision("--json", "up", str(path), "--yes", "--only", "container,model", src=src)
        code, _, err = sim_node.run(f"pct exec {VMID} -- sh -c {shlex.quote(install_script('bench1'))}",
                                    stdin=llama_server().read_bytes())
        assert code == 0, err
        provision("--json", "up", str(path), "--yes", "--only", "container,resolv,model,services,verify", src=src)

        out = tmp_path / "reports" / "bench.json"
        proc = provision("--json", "bench", str(path), "--runs", "2", "--prompt-tokens", "2300",
                         "--gen-tokens", "8", "--out", str(out), src=src)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print("\n" + json.dumps(report["summary"], indent=1))  # the measured figures (pytest -s)
        assert json.loads(out.read_text()) == report
        assert report["target"]["vmid"] == VMID and report["model"]["id"] == "smollm2"
        assert len(report["runs"]) == 2 and len(report["warmup"]) == 1
        assert report["llama_cpp"]["build"]["build"] == "bench1"  # BUILD-STAMP.json of the current build
        flags = report["server"]["flags"]
        assert flags[0] == "/opt/provision/llama.cpp/current/bin/llama-server" and "--api-key-file" in flags
        for key in ("direct.pp_tps", "direct.tg_tps", "gateway.tg_tps", "overhead.ttft_ratio"):
            s = report["summary"][key]
            assert s["n"] == 2 and 0 < s["min"] <= s["median"] <= s["max"]
        # no key in any output: the CT's key files hold them
        code, keys, _ = sim_node.run(f"pct exec {VMID} -- cat /etc/provision/llama-server.key "
                                     "/etc/provision/gateway.key")
        assert code == 0
        for key in keys.split():
            assert key not in proc.stdout and key not in proc.stderr and key not in out.read_text()

        table = provision("bench", str(path), "--runs", "1", "--warmup", "0", "--prompt-tokens", "0",
                          "--no-tools", "--gen-tokens", "4", "--direct-only", src=src)
        print("\n" + table.stdout)  # the measured table (pytest -s)
        assert "direct: prompt processing" in table.stdout and "gateway:" not in table.stdout
    finally:
        sim_node.destroy_ct(VMID)
        shutil.rmtree(MODELS_DIR, ignore_errors=True)
