"""Paths in the host file: normalised, and refused where they would reach Proxmox's or our own state
(issue 20, point 6: `model.host_dir: /var/lib/../../etc/pve` planned a bind mount of /etc/pve)."""

from __future__ import annotations

import pytest

from provisioner.config import load_text
from provisioner.config.paths import PathError, ct_path, host_path, normalise
from provisioner.errors import ConfigError

BASE = ("proxmox:\n  endpoint: https://pve.lan:8006\n  node: pve\n  auth:\n    token_id: root@pam!provision\n"
        "    token_secret: {env: PVE_TOKEN}\n")


def err(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text, "host.yaml")
    return str(info.value)


def test_the_reported_traversal_names_pmxcfs_with_line_and_fix() -> None:
    text = err(BASE + "model:\n  repo: a/b\n  file: m.gguf\n  host_dir: /var/lib/../../etc/pve\n")
    assert text == ("host.yaml:10: model.host_dir: '/var/lib/../../etc/pve' (read as /etc/pve) is inside /etc/pve "
                    "on the host: Proxmox's cluster file system (pmxcfs): every guest's config and, in priv/, the "
                    "cluster's keys, tokens and authkey\n"
                    "  fix: use a directory of its own for it, e.g. /var/lib/provision/models")


@pytest.mark.parametrize("path, tree", [
    ("/etc/pve", "/etc/pve"), ("/etc/pve/priv", "/etc/pve"), ("/etc//pve/", "/etc/pve"),
    ("/", "/etc/pve"), ("/var", "/var/lib/pve-cluster"), ("/var/lib/vz", "/var/lib/vz/images"),
    ("/root/models", "/root"), ("/var/lib/provision", "/var/lib/provision/host-driver"),
    ("/var/lib/lxc/120/rootfs", "/var/lib/lxc"), ("/etc/ssh", "/etc"), ("/proc/1/root", "/proc"),
])
def test_host_paths_that_reach_sensitive_trees_are_refused(path: str, tree: str) -> None:
    with pytest.raises(PathError) as info:
        host_path(path)
    assert f" {tree} on the host" in str(info.value)


@pytest.mark.parametrize("path, tree", [
    ("/opt", "/opt/provision"), ("/opt/provision/models", "/opt/provision"), ("/etc/provision", "/etc/provision"),
    ("/var", "/var/lib/provision"), ("/usr/local/models", "/usr"), ("/", "/opt/provision"),
])
def test_container_paths_that_cover_its_system_or_our_trees_are_refused(path: str, tree: str) -> None:
    with pytest.raises(PathError) as info:
        ct_path(path)
    assert f" {tree} in the container" in str(info.value)


def test_harmless_paths_are_normalised_not_refused() -> None:
    assert host_path("/var/lib/provision/models/") == "/var/lib/provision/models"
    assert host_path("/srv//data/./models") == "/srv/data/models"
    assert ct_path("/srv/models/") == "/srv/models"
    assert normalise("~/.ssh//id_ed25519") == "~/.ssh/id_ed25519"
    assert normalise("../secrets/./token") == "../secrets/token"  # local: '..' kept, resolved by the OS


def test_dotdot_is_refused_even_when_it_reads_harmless() -> None:
    """A symlinked parent makes '..' lead anywhere; PVE refuses it in mount points too."""
    with pytest.raises(PathError) as info:
        host_path("/srv/models/../llm")
    assert "climbs with '..'" in str(info.value) and info.value.fix == "write the path without '..', e.g. /srv/llm"


def test_relative_and_sensitive_paths_in_the_host_file() -> None:
    text = err(BASE + "model:\n  repo: a/b\n  file: m.gguf\n  dir: models\n")
    assert "host.yaml:10: model.dir: 'models' is not an absolute models directory in the container" in text
    text = err(BASE + "container:\n  mounts:\n    - host: /srv/data\n      path: /etc/provision\n")
    assert "container.mounts[0].path: '/etc/provision' is inside /etc/provision in the container" in text


def test_the_validated_config_holds_the_normalised_paths() -> None:
    cfg = load_text(BASE + "model:\n  repo: a/b\n  file: m.gguf\n  host_dir: /srv//models/\n  dir: /srv/m/./x/\n"
                    "container:\n  mounts:\n    - host: /srv/data/\n      path: /mnt//data\n"
                    "ssh:\n  key_file: ~/.ssh//id\n", "host.yaml").config
    assert cfg.model is not None
    assert (cfg.model.host_dir, cfg.model.dir) == ("/srv/models", "/srv/m/x")
    assert (cfg.container.mounts[0].host, cfg.container.mounts[0].path) == ("/srv/data", "/mnt/data")
    assert cfg.ssh.key_file == "~/.ssh/id"
