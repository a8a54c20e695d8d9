"""Host files for a simulated node: what tests, the benchmark and the demo hand to `provision`.

``host_file(conn, ...)`` builds the YAML text from the node's ``connection.json``
(secrets by file, TLS pinned to the node's own certificate), so every test
drives `provision` exactly the way a user would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


#: This VM's CPU advertises AMX, which its hypervisor cannot run: -march=native (GGML_NATIVE)
#: turns on ggml's AMX kernels and llama-server dies (SIGSEGV/SIGILL) at the first decode.
#: Test builds use the same code without AMX (inventories/sim.yaml says the same).
VM_SAFE_CPU_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                     "-DGGML_BMI2=ON"]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def host_data(conn: dict[str, Any], *, vmid: int, hostname: str | None = None, auth: str = "token",
              gpu: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The host file as data for CT ``vmid`` on the node described by ``conn``."""
    api, ssh = conn["api"], conn["ssh"]
    if auth == "token":
        auth_data: dict[str, Any] = {"token_id": api["token_id"], "token_secret": {"file": api["token_secret_file"]}}
    elif auth == "restricted":  # the privilege-separated token with the minimal role (sim/manage.py)
        auth_data = {"token_id": api["restricted_token_id"],
                     "token_secret": {"file": api["restricted_token_secret_file"]}}
    elif auth == "password":
        auth_data = {"user": api["user"], "password": {"file": api["password_file"]}}
    else:
        raise ValueError(f"auth must be token, restricted or password, not {auth!r}")
    net = conn["network"]
    prefix = net["cidr"].split("/")[1]
    ip = ".".join(net["gateway"].split(".")[:3] + [str(20 + vmid % 200)])
    data: dict[str, Any] = {
        "version": 1,
        "proxmox": {"endpoint": f"https://{api['host']}:{api['port']}", "node": conn["node"],
                    "fingerprint": api["fingerprint"], "auth": auth_data, "task_timeout": 600},
        "ssh": {"host": ssh["host"], "port": ssh["port"], "key_file": ssh["key_file"],
                "known_hosts": ssh["known_hosts"], "use_agent": False},
        "container": {"vmid": vmid, "hostname": hostname or f"llm-{vmid}", "cores": 2, "memory_mb": 2048,
                      "swap_mb": 256, "disk_gb": 8,
                      "network": {"bridge": net["bridge"], "ip": f"{ip}/{prefix}", "gateway": net["gateway"]},
                      "nameserver": net["nameserver"]},
        "gpu": {"enabled": gpu},
        "driver": {"repo_url": conn["cuda_repo_url"].split("/compute/cuda/repos/")[0] + "/compute/cuda/repos"},
        "llama_cpp": {"backend": "cpu", "cmake_flags": VM_SAFE_CPU_FLAGS},
    }
    # (no shared ccache bind mount by default: a bind mount makes PVE refuse snapshots,
    # which the snapshot and interruption tests rely on)
    return _merge(data, extra or {})


def write_host_file(path: Path, conn: dict[str, Any], **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(host_data(conn, **kwargs), sort_keys=False))
    return path
