"""Model, services, verify and clients on the simulated node: real LXC, real systemd, real llama-server.

One container (CT 181) is brought up once for the module with the real CLI: the
SmolLM2 GGUF pushed from this machine into the host's models dir and bind-mounted
read-only, llama-server and the gateway as hardened systemd units. The llama.cpp
build is the llama step's business (tested there); here a static CPU llama-server
built once on this machine is laid out in the CT the way that step lays it out.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import requests
import yaml

from provisioner.sim import assets
from provisioner.sim.hostfile import host_data

from .hub_server import HubServer
from .llama_bin import install_script, llama_server
from provision_cli import provision_cli

pytestmark = [pytest.mark.sim, pytest.mark.timeout(3000)]
#: CT id per flavour: PVE 9 creates unprivileged CTs by default, our host file default is privileged
VMIDS = {"privileged": 181, "unprivileged": 183}
#: every step but the GPU stack's (no GPU here; the llama build is replaced, see the docstring)
ONLY = ("--only", "container,resolv,model,services,verify")


MODELS_DIR = Path("/var/lib/provision-services-test") / f"models-{os.getpid()}"

#: a copy of the code taken when the module starts: the working tree is shared with engineers who edit it
#: meanwhile, and an edit of the gateway's code rightly re-deploys the gateway (not what these tests test)
SNAPSHOT: list[Path] = []


def snapshot(dest: Path) -> Path:
    repo = Path(__file__).resolve().parents[2]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(repo / "provisioner", dest / "provisioner", ignore=ignore)
    shutil.copytree(repo / "templates", dest / "templates", ignore=ignore)
    shutil.copy(repo / "pyproject.toml", dest / "pyproject.toml")
    (dest / "README.md").write_text("snapshot\n")
    return dest


def provision(*args: str, check: bool = True, timeout: int = 2400, only: tuple[str, str] = ONLY,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if "up" in args:
        args = (*args, *only)
    return provision_cli(*args, check=check, timeout=timeout, env=env, pythonpath=SNAPSHOT[0])


def report(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def applied(rep: dict) -> list[tuple[str, str, str]]:
    return [(c["step"], c["action"], c["summary"]) for c in rep["applied"]]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ct(sim_node, host: dict, command: str) -> str:
    code, out, err = sim_node.run(f"pct exec {host['vmid']} -- sh -c {shlex.quote(command)}")
    assert code == 0, f"{command}: {err or out}"
    return out.strip()


@pytest.fixture(scope="module", params=sorted(VMIDS))
def host(request, sim_node, tmp_path_factory) -> Iterator[dict]:
    flavour = request.param
    vmid = VMIDS[flavour]
    tmp = tmp_path_factory.mktemp(f"services-{flavour}")
    SNAPSHOT[:] = [snapshot(tmp / "src")]
    data = host_data(sim_node.conn, vmid=vmid, gpu=False, extra={
        "llama_cpp": {"backend": "cpu", "source": {"tarball": str(assets.llama_source())}},
        # a models dir of our own on the host (not under /tmp/pytest-of-root, 0700, which the mapped root of an
        # unprivileged CT cannot traverse): the first up creates it and pushes the model
        "model": {"path": str(assets.smollm2_model()), "name": "smollm2", "host_dir": str(MODELS_DIR)},
        "server": {"host": "0.0.0.0", "ctx_size": 32768, "threads": 2, "health_timeout": 300,
                   "override_kv": ["llama.context_length=int:32768"]},
        "container": {"unprivileged": flavour == "unprivileged"},
        "clients": {"pi": True, "claude_code_router": True, "output_dir": str(tmp / "clients")},
    })
    path = write(tmp / "host.yaml", data)
    # the container (with its models bind mount) first, then llama-server where the llama step puts it
    first = report(provision("--json", "up", str(path), "--yes", only=("--only", "container,model")))
    steps = [(s, a) for s, a, _ in applied(first)]
    assert ("container", "create") in steps, steps
    binary = llama_server()
    code, _, err = sim_node.run(f"pct exec {vmid} -- sh -c {shlex.quote(install_script('test1'))}",
                                  stdin=binary.read_bytes())
    assert code == 0, err
    first = report(provision("--json", "up", str(path), "--yes"))
    steps += [(s, a) for s, a, _ in applied(first)]
    for expected in [("model.host_dir", "create"), ("model", "push"), ("services", "install"),
                     ("services", "start"), ("verify", "verify")]:
        assert expected in steps, steps
    print(f"\n{flavour}: first up: {first['seconds']} s, timings {first['timings']}")  # measured figures (-s)
    yield {"path": path, "data": data, "tmp": tmp, "first": first, "vmid": vmid, "flavour": flavour}
    sim_node.destroy_ct(vmid)
    shutil.rmtree(MODELS_DIR, ignore_errors=True)


def test_units_run_hardened_as_their_users(sim_node, host) -> None:
    assert ct(sim_node, host, "systemctl is-active llama-server provision-gateway").split() == ["active", "active"]
    assert ct(sim_node, host, "ps -o user= -C llama-server") == "llama"
    props = ct(sim_node, host, "systemctl show llama-server -p NoNewPrivileges -p ProtectSystem -p User")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props
    # the models dir is a read-only bind mount of the host's dir
    assert "ro" in ct(sim_node, host, "findmnt -n -o OPTIONS /srv/models").split(",")
    assert ct(sim_node, host, "stat -c '%a %U:%G' /etc/provision/llama-server.key") == "640 root:llama"
    assert any("verified: llama-server healthy" in n for n in host["first"]["notes"])
    # SmolLM2-135M's chat template has no tool support (its /props says so): `up` warns (issue 20 point 11)
    assert any("chat template has no tool support" in n for n in host["first"]["notes"]), host["first"]["notes"]
    # two slots over one unified KV pool, the main one keeping the whole context (issue 20 point 13)
    unit = ct(sim_node, host, "systemctl cat llama-server")
    assert "--parallel 2" in unit and "--kv-unified-per-slot" in unit


def test_second_up_restarts_nothing_within_budget(sim_node, host) -> None:
    pid = ct(sim_node, host, "systemctl show -p MainPID --value llama-server")
    rep = report(provision("--json", "up", str(host["path"]), "--yes"))
    assert rep["applied"] == []
    assert rep["ssh_round_trips"] <= 3
    print(f"\nno-op up: {rep['seconds']} s, {rep['api_calls']} API calls, {rep['ssh_round_trips']} SSH round trips")
    assert ct(sim_node, host, "systemctl show -p MainPID --value llama-server") == pid


def test_changed_flag_restarts_exactly_llama_server(sim_node, host, tmp_path) -> None:
    data = yaml.safe_load(host["path"].read_text())
    data["server"]["parallel"] = 2
    changed = write(tmp_path / "h.yaml", data)
    gw_pid = ct(sim_node, host, "systemctl show -p MainPID --value provision-gateway")
    rep = report(provision("--json", "up", str(changed), "--yes"))
    assert [(s, a) for s, a, _ in applied(rep)] == [("services", "write"), ("services", "restart"),
                                                   ("verify", "verify")]
    assert "restart llama-server" in applied(rep)[1][2]
    assert ct(sim_node, host, "systemctl show -p MainPID --value provision-gateway") == gw_pid
    assert "--parallel 2" in ct(sim_node, host, "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value llama-server)/cmdline")
    assert report(provision("--json", "up", str(changed), "--yes"))["applied"] == []
    rep = report(provision("--json", "up", str(host["path"]), "--yes"))  # back to the module's config
    assert [(s, a) for s, a, _ in applied(rep)] == [("services", "write"), ("services", "restart"),
                                                   ("verify", "verify")]


def test_client_configs_point_at_the_live_gateway(sim_node, host) -> None:
    shown = provision("clients", str(host["path"]))
    assert "********" in shown.stdout and "ANTHROPIC_BASE_URL" in shown.stdout
    provision("clients", str(host["path"]), "--write")
    clients = host["tmp"] / "clients"
    settings = json.loads((clients / "claude-code" / "settings.json").read_text())
    env = settings["env"]
    assert (clients / "claude-code" / "settings.json").stat().st_mode & 0o777 == 0o600
    assert requests.get(env["ANTHROPIC_BASE_URL"] + "/health", timeout=10).status_code == 200
    reply = anthropic.Anthropic(base_url=env["ANTHROPIC_BASE_URL"], api_key=env["ANTHROPIC_API_KEY"]).messages.create(
        model=env["ANTHROPIC_MODEL"], max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert reply.type == "message" and reply.usage.output_tokens >= 1
    pi = json.loads((clients / "pi" / "models.json").read_text())["providers"]["llama-local"]
    assert pi["models"][0]["contextWindow"] == 32768  # the per-slot n_ctx from /props (parallel 1)
    models = requests.get(pi["baseUrl"] + "/models", headers={"Authorization": f"Bearer {pi['apiKey']}"}, timeout=10)
    assert models.status_code == 200 and "smollm2" in models.text
    ccr = json.loads((clients / "claude-code-router" / "config.json").read_text())
    assert ccr["Router"]["default"] == "llama-local,smollm2"
    wrapper = clients / "bin" / "claude-local"
    assert wrapper.stat().st_mode & 0o111 and "settings.json" in wrapper.read_text()
    # again: nothing rewritten; a foreign edit is backed up, not lost
    again = provision("clients", str(host["path"]), "--write")
    assert again.stderr.count(": unchanged") == 4, again.stderr
    (clients / "pi" / "models.json").write_text("{}\n")
    third = provision("clients", str(host["path"]), "--write")
    assert "kept as models.json.bak-" in third.stderr
    assert len(list((clients / "pi").glob("models.json.bak-*"))) == 1


def test_immutable_resolv_conf_is_found_and_fixed(sim_node, host) -> None:
    vmid = host["vmid"]
    if host["flavour"] == "privileged":
        # running: the fact finds +i and the resolv step removes it before the next start trips on it
        # (an unprivileged CT cannot set +i itself: CAP_LINUX_IMMUTABLE is not its to have)
        ct(sim_node, host, "chattr +i /etc/resolv.conf")
        rep = report(provision("--json", "up", str(host["path"]), "--yes"))
        assert [(s, a) for s, a, _ in applied(rep)] == [("resolv", "fix")]
        assert any("resolv.conf was immutable" in n for n in rep["notes"])
        assert "i" not in ct(sim_node, host, "lsattr -d /etc/resolv.conf").split()[0]
    # stopped: the start fails exactly like PVE's (only "startup for container 'N' failed": the hook's
    # words stay in LXC's debug log), `up` finds the flag through pct mount + lsattr and retries
    code, out, err = sim_node.run(f"pct stop {vmid} && pct mount {vmid} && "
                                  f"chattr +i /var/lib/lxc/{vmid}/rootfs/etc/resolv.conf && pct unmount {vmid}")
    assert code == 0, err
    code, out, err = sim_node.run(f"pct start {vmid}")
    assert code != 0 and f"startup for container '{vmid}' failed" in err and "atomic file" not in out + err
    rep = report(provision("--json", "up", str(host["path"]), "--yes"))
    assert ("container", "start") in [(s, a) for s, a, _ in applied(rep)]
    assert any("from the host (pct mount)" in n for n in rep["notes"]), rep["notes"]
    assert ct(sim_node, host, "systemctl is-active llama-server provision-gateway").split() == ["active", "active"]


def test_hub_download_inside_the_container_restarts_llama_server_once(sim_node, host, tmp_path) -> None:
    """location: container, a hub repo (HF_ENDPOINT: a hub-like server on the bridge): curl in the CT."""
    hub = HubServer({"HuggingFaceTB/SmolLM2-GGUF/smollm2-q4.gguf": assets.smollm2_model()}, host="10.0.3.1")
    try:
        data = yaml.safe_load(host["path"].read_text())
        data["model"] = {"repo": "HuggingFaceTB/SmolLM2-GGUF", "file": "smollm2-q4.gguf", "name": "smollm2",
                         "location": "container", "dir": "/srv/models-ct"}
        changed = write(tmp_path / "hub.yaml", data)
        rep = report(provision("--json", "up", str(changed), "--yes", env={"HF_ENDPOINT": hub.url}))
        steps = [(s, a) for s, a, _ in applied(rep)]
        assert ("model", "download") in steps and steps.count(("services", "restart")) == 1, steps
        assert steps[-1] == ("verify", "verify")
        side = json.loads(ct(sim_node, host, "cat /srv/models-ct/smollm2-q4.gguf.provision.json"))
        assert side["sha256"] == assets.sha256(assets.smollm2_model()) and side["verified"] == "sha256"
        assert "/srv/models-ct/smollm2-q4.gguf" in ct(
            sim_node, host, "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value llama-server)/cmdline")
        again = report(provision("--json", "up", str(changed), "--yes", env={"HF_ENDPOINT": hub.url}))
        assert [(s, a) for s, a, _ in applied(again)] == []  # present and verified: no second download
        assert sum(1 for m, p, a, r in hub.requests if p.startswith("/cdn/") and m == "GET") == 1
    finally:
        hub.close()
        report(provision("--json", "up", str(host["path"]), "--yes"))  # back to the module's config
