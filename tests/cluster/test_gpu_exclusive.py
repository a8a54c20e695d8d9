"""GPU exclusivity planned from facts: claims of other containers in, devN (or an error) out."""

from __future__ import annotations

import pytest

from provisioner.errors import ConfigError
from provisioner.facts.base import build_script, parse_output
from provisioner.facts.gpu_claims import CLAIMS, GpuClaim, parse_claims
from provisioner.operations.passthrough import device_keys
from tests.gpu.planctx import RTX4090, RTX5090, ctx, host_facts

TWO = [RTX4090, RTX5090]


def facts(*claims: GpuClaim) -> dict:
    return {**host_facts(gpus=TWO), CLAIMS.name: list(claims)}


def gpu_paths(c) -> list[str]:
    return sorted(v.split(",")[0] for v in device_keys(c).desired.values() if v[11:12].isdigit())


def test_claims_parsed_from_config_lines() -> None:
    out = "\n".join([
        "201 #managed-by%3A provision (do not remove this line)",
        "201 dev0: /dev/nvidia1,uid=0,gid=0", "201 dev1: path=/dev/nvidia0,gid=0", "201 hostname: llm-a",
        "201 tags: provision", "202 hostname: other", "202 dev0: /dev/nvidia1", "203 hostname: nogpu"])
    assert parse_claims(out, 0) == [GpuClaim(201, "llm-a", 0, True), GpuClaim(201, "llm-a", 1, True),
                                    GpuClaim(202, "other", 1, False)]


def test_claims_script_reads_only_main_section(tmp_path) -> None:
    """The fact's shell snippet, run for real over config files in a temp /etc/pve/lxc."""
    import subprocess
    lxc = tmp_path / "lxc"
    lxc.mkdir()
    (lxc / "201.conf").write_text("#managed-by%3A provision\ndev0: /dev/nvidia1,uid=0,gid=0\n"
                                  "dev1: /dev/nvidiactl,uid=0,gid=0\nhostname: a\ntags: provision\n"
                                  "\n[snap1]\ndev2: /dev/nvidia0\n")
    script = build_script([CLAIMS], None, False, "n1").replace("/etc/pve/lxc", str(lxc))
    out = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, check=True).stdout
    assert parse_output(out, [CLAIMS], "n1")[CLAIMS.name] == [GpuClaim(201, "a", 1, True)]


def test_free_gpu_is_passed() -> None:
    c = ctx(facts(GpuClaim(201, "llm-a", 0, True)), extra="gpu: {select: [1]}\n")
    assert gpu_paths(c) == ["/dev/nvidia1"]


def test_taken_gpu_is_refused_with_holder_and_fix() -> None:
    c = ctx(facts(GpuClaim(201, "llm-a", 0, True)), extra="gpu: {select: ['4090']}\n")
    with pytest.raises(ConfigError) as err:
        device_keys(c)
    text = str(err.value)
    assert "GPU 0 (NVIDIA GeForce RTX 4090, 01:00.0, /dev/nvidia0) is already passed to CT 201 (llm-a)" in text
    assert "gpu.share: true" in text and err.value.key == "gpu.select"


def test_select_all_takes_the_free_ones_and_notes_the_rest() -> None:
    c = ctx(facts(GpuClaim(201, "llm-a", 0, True)))
    assert gpu_paths(c) == ["/dev/nvidia1"]
    assert any("skips GPU 0" in n and "CT 201" in n for n in c.notes)


def test_select_all_with_every_gpu_taken_is_an_error() -> None:
    c = ctx(facts(GpuClaim(201, "a", 0, True), GpuClaim(202, "b", 1, True)))
    with pytest.raises(ConfigError, match="every GPU on the node is already passed"):
        device_keys(c)


def test_share_passes_a_taken_gpu() -> None:
    c = ctx(facts(GpuClaim(201, "llm-a", 0, True)), extra="gpu: {select: [0], share: true}\n")
    assert gpu_paths(c) == ["/dev/nvidia0"]


def test_own_claim_and_foreign_containers_do_not_block() -> None:
    # CT 120 is the host file's own container; 300 is not managed by provision (a note only)
    c = ctx(facts(GpuClaim(120, "llm", 0, True), GpuClaim(300, "foreign", 1, False)))
    assert gpu_paths(c) == ["/dev/nvidia0", "/dev/nvidia1"]
    assert any("CT 300 (foreign)" in n and "not managed" in n for n in c.notes)


def test_the_first_holder_keeps_its_gpu_when_a_later_one_shares_it() -> None:
    """Issue 20 point 10: CT 201 was given our GPU 0 with gpu.share: true; our unchanged host file
    failed plan, up and doctor (exit 2). Sharing is agreed by the one who asks: we keep it, noted."""
    for select in ("all", "[0]", "['4090']"):
        c = ctx(facts(GpuClaim(201, "a", 0, True)), config={"dev0": "/dev/nvidia0,uid=0,gid=0"},
                extra=f"gpu: {{select: {select}}}\n")
        paths = gpu_paths(c)
        assert "/dev/nvidia0" in paths, select
        assert any("GPU 0" in n and "CT 201 (a), which asked to share it" in n for n in c.notes), c.notes
    # a GPU we do not have yet is still refused
    c = ctx(facts(GpuClaim(201, "a", 1, True)), config={"dev0": "/dev/nvidia0,uid=0,gid=0"},
            extra="gpu: {select: [0, 1]}\n")
    with pytest.raises(ConfigError, match="GPU 1 .* is already passed to CT 201"):
        device_keys(c)
