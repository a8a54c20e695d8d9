"""Loading an inventory: directories and hosts: files, defaults merged, errors with file:line:key."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import ConfigError, ConfigErrors
from provisioner.fleet.inventory import is_inventory, load_inventory

FP = ":".join(["AB"] * 32)

HOST = """\
version: 1
proxmox:
  endpoint: https://{host}:8006
  node: {node}
  fingerprint: "{fp}"
  auth:
    token_id: provision@pve!ci
    token_secret: {{env: PVE_TOKEN_SECRET}}
container:
  vmid: {vmid}
  hostname: {hostname}
"""

INVENTORY = """\
defaults:
  version: 1
  proxmox:
    fingerprint: "{fp}"
    node: pve1
    auth:
      token_id: provision@pve!ci
      token_secret: {{env: PVE_TOKEN_SECRET}}
  container:
    cores: 4
    memory_mb: 8192
    tags: [llm]
hosts:
  gpu1:
    proxmox:
      endpoint: https://gpu1.example:8006
    container:
      vmid: 101
      hostname: llm-a
      tags: [team-a]
  gpu2:
    proxmox:
      endpoint: https://gpu2.example:8006
      node: pve2
    container:
      vmid: 101
      hostname: llm-b
      cores: 16
"""


def host_text(host: str = "pve.example", node: str = "pve1", vmid: int = 101, hostname: str = "llm") -> str:
    return HOST.format(host=host, node=node, vmid=vmid, hostname=hostname, fp=FP)


def errors_of(exc: ConfigError) -> list[ConfigError]:
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


def test_inventory_file_merges_defaults_under_each_host(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP))
    assert is_inventory(f)
    inv = load_inventory(f)
    a, b = inv.hosts
    assert (a.name, b.name) == ("gpu1", "gpu2")
    # mappings merge key by key; a list in the entry replaces the default's
    assert a.loaded.config.container.cores == 4 and a.loaded.config.container.memory_mb == 8192
    assert a.loaded.config.container.tags == ("team-a",) or list(a.loaded.config.container.tags) == ["team-a"]
    assert b.loaded.config.container.cores == 16 and list(b.loaded.config.container.tags) == ["llm"]
    assert a.loaded.config.proxmox.node == "pve1" and b.loaded.config.proxmox.node == "pve2"
    assert b.loaded.config.proxmox.fingerprint == FP
    assert a.source == f"{f}:14"


def test_directory_of_host_files_skips_drafts_and_other_files(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(host_text(host="b.example", hostname="llm-b"))
    (tmp_path / "a.yml").write_text(host_text(host="a.example", hostname="llm-a"))
    (tmp_path / "_shared.yaml").write_text("not: a host file\n")
    (tmp_path / ".hidden.yaml").write_text("not: a host file\n")
    (tmp_path / "README.md").write_text("# notes\n")
    (tmp_path / "more.yaml").write_text(INVENTORY.format(fp=FP))
    assert is_inventory(tmp_path)
    inv = load_inventory(tmp_path)
    assert [h.name for h in inv.hosts] == ["a", "b", "gpu1", "gpu2"]


def test_a_single_host_file_is_not_an_inventory(tmp_path: Path) -> None:
    f = tmp_path / "h.yaml"
    f.write_text(host_text())
    assert not is_inventory(f)
    broken = tmp_path / "broken.yaml"
    broken.write_text("proxmox: [\n")
    assert not is_inventory(broken)  # the single-host loader reports it, with its line


def test_error_in_a_host_entry_names_file_line_and_key(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP).replace("      cores: 16", "      coers: 16"))
    with pytest.raises(ConfigError) as info:
        load_inventory(f)
    text = str(info.value)
    assert f"{f}:28: hosts.gpu2.container.coers: unknown key 'coers'" in text
    assert "did you mean 'cores'?" in text


def test_error_in_defaults_names_the_defaults_line_and_the_host(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP).replace("    memory_mb: 8192", "    memory_mb: lots"))
    with pytest.raises(ConfigError) as info:
        load_inventory(f)
    errs = errors_of(info.value)
    # one error per host that inherits it, each pointing at line 11 of defaults
    assert [(e.line, e.key) for e in errs] == [(11, "defaults.container.memory_mb")] * 2
    assert "in host 'gpu1'" in errs[0].message and "in host 'gpu2'" in errs[1].message


def test_missing_key_names_the_host(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP).replace("      endpoint: https://gpu1.example:8006\n", ""))
    with pytest.raises(ConfigError) as info:
        load_inventory(f)
    (err,) = errors_of(info.value)
    assert err.key == "hosts.gpu1.proxmox.endpoint" and err.message == "required key is missing"
    assert err.file == str(f) and err.line == 15


def test_errors_of_all_files_are_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(host_text().replace("vmid: 101", "vmid: -3"))
    (tmp_path / "b.yaml").write_text(host_text(hostname="llm-b") + "gpu: {enabeld: true}\n")
    (tmp_path / "c.yaml").write_text("hosts: [1, 2]\n")
    with pytest.raises(ConfigErrors) as info:
        load_inventory(tmp_path)
    where = [(Path(e.file).name, e.line, e.key) for e in info.value.errors]
    assert ("a.yaml", 10, "container.vmid") in where
    assert ("b.yaml", 12, "gpu.enabeld") in where
    assert ("c.yaml", 1, "hosts") in where


def test_unknown_top_level_key_of_an_inventory_file(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP) + "default:\n  ssh: {port: 22}\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(f)
    assert f"{f}:29: default: unknown key 'default' in an inventory file" in str(info.value)


def test_duplicate_targets_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(host_text(vmid=101, hostname="llm-a"))
    (tmp_path / "b.yaml").write_text(host_text(vmid=101, hostname="llm-b"))
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path)
    err = info.value
    assert (Path(err.file).name, err.line, err.key) == ("b.yaml", 10, "container.vmid")
    assert "'b' and 'a'" in err.message and "manage the same container (vmid 101 on node pve1" in err.message
    assert f"{tmp_path / 'a.yaml'}:10" in err.message


def test_duplicate_hostname_on_one_node_is_an_error_other_nodes_are_fine(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(host_text(vmid=101, hostname="llm"))
    (tmp_path / "b.yaml").write_text(host_text(vmid=102, hostname="LLM"))
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path)
    assert info.value.key == "container.hostname" and info.value.line == 11
    # same vmid and hostname on another node (or another endpoint) is another container
    (tmp_path / "b.yaml").write_text(host_text(node="pve2", vmid=101, hostname="llm"))
    (tmp_path / "c.yaml").write_text(host_text(host="other.example", vmid=101, hostname="llm"))
    assert [h.name for h in load_inventory(tmp_path).hosts] == ["a", "b", "c"]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "gpu1.yaml").write_text(host_text(host="x.example"))
    (tmp_path / "fleet.yaml").write_text(INVENTORY.format(fp=FP))
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path)
    assert "host name 'gpu1' is also used at" in str(info.value)


def test_empty_directory_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no host files"):
        load_inventory(tmp_path)
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_inventory(tmp_path / "nope")


def test_cli_reports_inventory_errors_with_exit_code_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP).replace("      cores: 16", "      coers: 16"))
    for cmd in ("up", "plan", "status"):
        proc = subprocess.run([sys.executable, "-m", "provisioner.cli.main", cmd, str(f)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert f"{f}:28: hosts.gpu2.container.coers: unknown key 'coers'" in proc.stderr


def test_cli_rejects_an_unknown_step_before_contacting_any_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP))
    proc = subprocess.run([sys.executable, "-m", "provisioner.cli.main", "up", str(f), "--yes",
                           "--only", "contianer"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "unknown step(s): contianer" in proc.stderr


def test_check_validates_an_inventory_offline(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    f = tmp_path / "fleet.yaml"
    f.write_text(INVENTORY.format(fp=FP))
    proc = subprocess.run([sys.executable, "-m", "provisioner.cli.main", "--json", "check", str(f)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hosts"] == ["gpu1", "gpu2"]
