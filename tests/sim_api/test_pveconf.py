"""PVE's LXC config file format: round trips, description encoding, digest, locking."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from provisioner.sim.pve.conf import ConfStore, PveConf, decode_text, digest, encode_text, parse, write

SAMPLE = """\
#GPU box%3A llama.cpp
#managed by provision %25 100
arch: amd64
cores: 8
dev0: /dev/nvidia0,gid=44
features: nesting=1
hostname: llm
memory: 16384
net0: name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth
ostype: debian
parent: before-driver
rootfs: local-lvm:vm-120-disk-0,size=64G
tags: gpu;llm
unprivileged: 1
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file

[pve:pending]
delete: swap
dev1: /dev/nvidia-uvm

[before-driver]
#first snapshot
arch: amd64
hostname: llm
memory: 8192
snaptime: 1763700000
"""


def test_round_trip_is_byte_identical() -> None:
    conf = parse(SAMPLE)
    assert write(conf) == SAMPLE
    assert conf.values["description"] == "GPU box: llama.cpp\nmanaged by provision % 100\n"
    assert conf.main.lxc[0] == ("lxc.cgroup2.devices.allow", "c 195:* rwm")
    assert conf.pending.values == {"delete": "swap", "dev1": "/dev/nvidia-uvm"}
    assert conf.pending_delete() == ["swap"]
    assert conf.snapshots["before-driver"].values["description"] == "first snapshot\n"
    assert conf.snapshots["before-driver"].values["snaptime"] == "1763700000"


def test_digest_is_sha1_of_the_file() -> None:
    assert parse(SAMPLE).digest == hashlib.sha1(SAMPLE.encode()).hexdigest()
    assert digest(SAMPLE) == parse(SAMPLE).digest


def test_writer_sorts_keys_and_puts_description_first() -> None:
    conf = PveConf()
    conf.values.update(memory="512", arch="amd64", description="a:b\nzwei ü\n")
    conf.pending.values["cores"] = "2"
    assert write(conf) == ("#a%3Ab\n#zwei %C3%BC\narch: amd64\nmemory: 512\n\n"
                           "[pve:pending]\ncores: 2\n")


def test_text_encoding_matches_pve() -> None:
    """Only control/high-bit characters, ':' and '%' are escaped."""
    assert encode_text("100% sure: yes!") == "100%25 sure%3A yes!"
    assert decode_text("100%25 sure%3A yes!") == "100% sure: yes!"


def test_unparsable_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="unable to parse config: this is not a key"):
        parse("this is not a key\n")


def test_newline_in_value_is_refused() -> None:
    conf = PveConf()
    conf.values["hostname"] = "a\nb"
    with pytest.raises(ValueError, match="detected invalid newline inside property 'hostname'"):
        write(conf)


def test_store_save_load_and_lock(tmp_path: Path) -> None:
    store = ConfStore(tmp_path)
    conf = parse(SAMPLE)
    new_digest = store.save(120, conf)
    assert store.path(120) == tmp_path / "etc/pve/lxc/120.conf"
    assert store.load(120).digest == new_digest == hashlib.sha1(SAMPLE.encode()).hexdigest()
    assert store.vmids() == [120]

    order: list[str] = []
    with store.lock(120):
        t = threading.Thread(target=lambda: (store.lock(120).__enter__(), order.append("second")))
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]
    assert (tmp_path / "etc/pve/.locks/lock-120.conf").exists()


def test_empty_description_lines_are_kept_as_bare_hashes() -> None:
    """write_pct_config writes each split(/\\n/) line as '#'.line (pve-container
    src/PVE/LXC/Config.pm:1248-1252@94f5585): inner empty lines stay, trailing ones go."""
    from provisioner.sim.pve.conf import PveConf, Section, parse, write

    text = write(PveConf(main=Section({"description": "first\n\nthird\n\n", "memory": "512"})))
    assert text == "#first\n#\n#third\nmemory: 512\n"
    assert parse(text).values["description"] == "first\n\nthird\n"
