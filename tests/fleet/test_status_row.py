"""A status row from the facts the single-host `status` gathers (parsed by the real fact parsers)."""

from __future__ import annotations

from provisioner.config import load_text
from provisioner.engine.context import PlanContext
from provisioner.facts.nvidia import parse_driver, parse_gpus
from provisioner.facts.nvidia_ct import DriverUserspace
from provisioner.facts.pve import ContainerState, PveFacts
from provisioner.facts.services import parse_services
from provisioner.fleet.status import status_row

FP = ":".join(["AB"] * 32)
HOST = f"""\
version: 1
proxmox:
  endpoint: https://gpu1.example:8006
  node: gpu1
  fingerprint: "{FP}"
  auth: {{token_id: provision@pve!ci, token_secret: {{env: PVE_TOKEN_SECRET}}}}
container: {{vmid: 101, hostname: llm}}
"""
GPUS = ("0, NVIDIA GeForce RTX 4090, 8.9, 24564, 00000000:01:00.0\n"
        "1, NVIDIA RTX A6000, 8.6, 49140, 00000000:41:00.0\n"
        "#minor 0000:01:00.0 0\n#minor 0000:41:00.0 1\n")
CONFIG = {"hostname": "llm", "tags": "provision", "dev0": "/dev/nvidia1,gid=0,uid=0", "dev1": "/dev/nvidiactl,gid=0,uid=0",
          "dev2": "/dev/nvidia-uvm,gid=0,uid=0", "dev3": "/dev/nvidia7,gid=0,uid=0"}


def ctx(*, status: str = "running", ct_libs: list[str] | None = None, services: str | None = None) -> PlanContext:
    cfg = load_text(HOST).config
    facts = {"nvidia.driver": parse_driver("sys=580.95.05\nproc=\n", 0), "nvidia.gpus": parse_gpus(GPUS, 0)}
    if ct_libs is not None:
        facts["ct.driver"] = DriverUserspace(os_id="debian", os_version="12", nvml_libs=ct_libs)
    if services is not None:
        facts["services.ct"] = parse_services(services, 0)
    ct = ContainerState(vmid=101, config=CONFIG, digest="x", status=status, node="gpu1")
    return PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=ct, vmid=101), facts=facts,
                       root_path="ssh")


def test_gpus_passed_through_are_named_by_minor() -> None:
    row = status_row(ctx())
    # dev0 is /dev/nvidia1: the A6000 (minor 1); /dev/nvidia7 matches no GPU of the host
    assert row["gpus"] == ["NVIDIA RTX A6000 (41:00.0)", "/dev/nvidia7 (no such GPU)"]
    assert (row["vmid"], row["node"], row["state"], row["pve"]) == (101, "gpu1", "running", "9.1.3")


def test_driver_mismatch_is_flagged() -> None:
    assert status_row(ctx(ct_libs=["580.95.05"]))["driver_mismatch"] is False
    row = status_row(ctx(ct_libs=["575.57.08"]))
    assert (row["host_driver"], row["ct_driver"], row["driver_mismatch"]) == ("580.95.05", "575.57.08", True)
    # no userspace in the container yet (CPU-only, or the driver step has not run): nothing to compare
    assert status_row(ctx())["driver_mismatch"] is False


def test_service_health() -> None:
    out = ("unit llama-server active enabled\nunit provision-gateway failed enabled\n"
           "health llama 200\nhealth gateway 000\n")
    row = status_row(ctx(services=out))
    assert (row["llama"], row["gateway"]) == ("ok", "down")
    row = status_row(ctx(services="unit llama-server inactive not-found\nhealth llama 000\n"))
    assert row["llama"] == "not installed"
    assert status_row(ctx(services="health llama 503\n"))["llama"] == "HTTP 503"
    assert status_row(ctx())["llama"] == "n/a"  # no model configured: no services facts
    assert status_row(ctx(status="stopped", services=out))["llama"] == "-"


def test_status_shows_which_models_the_gateway_maps(capsys) -> None:
    """Issue 19: `provision status` names the models the gateway maps (from the config `up` writes)."""
    from provisioner.cli.output import Output
    from provisioner.fleet.status import gateway_line

    cfg = load_text(HOST + "model: {repo: bartowski/Qwen2.5-Coder-7B-Instruct-GGUF, "
                           "file: Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf, name: coder}\n"
                           "gateway: {model_aliases: {fast: coder}}\n").config
    c = ctx(services="unit provision-gateway active enabled\nhealth gateway 200\n")
    c = PlanContext(cfg=cfg, pve=c.pve, facts=c.facts, root_path="ssh")
    assert status_row(c)["gateway_models"] == ["claude-* → coder", "coder", "fast → coder"]
    assert gateway_line(c) == "gateway :4000 (translate, health ok) maps claude-* → coder, coder, fast → coder"
    Output().status(c)
    assert "gateway :4000 (translate, health ok) maps claude-* → coder, coder, fast → coder" in capsys.readouterr().err
    assert status_row(ctx())["gateway_models"] == []  # no model: no gateway


def test_status_says_a_reboot_is_pending(capsys) -> None:
    """Issue 17: the guard's dpkg hook notes a driver waiting for a reboot; `status` says it (as doctor does),
    with what the next boot will do in this host file's driver.follow_host mode."""
    from provisioner.cli.output import Output
    from provisioner.facts.guard import parse_guard

    c = ctx()
    assert status_row(c)["reboot_pending"] is None  # no guard fact (no GPU host step): nothing to say
    c.facts["guard"] = parse_guard("enabled 1\npending \n", 0)
    assert status_row(c)["reboot_pending"] is None
    c.facts["guard"] = parse_guard("enabled 1\npending ondisk=580.105.08 loaded=580.95.05\n", 0)
    said = status_row(c)["reboot_pending"]
    assert said.startswith("NVIDIA module 580.105.08 on disk, 580.95.05 loaded: a reboot is pending")
    assert "the guard moves each managed container" in said and "(driver.follow_host: sync)" in said
    Output().status(c)
    assert "warning: NVIDIA module 580.105.08 on disk, 580.95.05 loaded: a reboot is pending" in capsys.readouterr().err
