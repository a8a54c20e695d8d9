"""The schema validator gives PVE's per-key messages, for both shipped versions."""

from __future__ import annotations

import pytest

from provisioner.pveschema import (NOT_IN_SCHEMA, PropertyStringError, UnknownEndpoint,
                                   config_format, format_property_string, load,
                                   parse_property_string, validate)

CONFIG = "/nodes/pve/lxc/120/config"
VERSIONS = ["8.4", "9.1"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("params, expected", [
    ({"dev0": "/dev/nvidia0,gid=abc"},
     {"dev0": "invalid format - format error\ndev0.gid: type check ('integer') failed - got 'abc'\n"}),
    ({"dev0": "/dev/nvidia0,foo=1"},
     {"dev0": "invalid format - invalid key in comma-separated list property: foo\n"}),
    ({"dev0": "/dev/nvidia0,gid=-1"},
     {"dev0": "invalid format - format error\ndev0.gid: value must have a minimum value of 0\n"}),
    ({"dev0": "/dev/nvidia0,mode=777"},
     {"dev0": "invalid format - format error\ndev0.mode: value does not match the regex pattern\n"}),
    ({"dev0": "/tmp/nvidia0"},
     {"dev0": "invalid format - format error\ndev0.path: invalid format - /tmp/nvidia0 is not a "
              "valid device path\n\n"}),
    ({"dev0": "/dev/nvidia0,/dev/nvidia1"},
     {"dev0": "invalid format - duplicate key in comma-separated list property: path\n"}),
    ({"dev256": "/dev/nvidia0"}, {"dev256": NOT_IN_SCHEMA}),
    ({"net32": "name=eth0"}, {"net32": NOT_IN_SCHEMA}),
    ({"lxc.cgroup2.devices.allow": "c 195:* rwm"}, {"lxc.cgroup2.devices.allow": NOT_IN_SCHEMA}),
    ({"net0": "bridge=vmbr0"},
     {"net0": "invalid format - format error\nnet0.name: property is missing and it is not optional\n"}),
    ({"memory": "abc"}, {"memory": "type check ('integer') failed - got 'abc'"}),
    ({"memory": "8"}, {"memory": "value must have a minimum value of 16"}),
    ({"onboot": "yes"}, {"onboot": "type check ('boolean') failed - got 'yes'"}),
    ({"arch": "sparc"}, {"arch": "value 'sparc' does not have a value in the enumeration "
                                 "'amd64, i386, arm64, armhf, riscv32, riscv64'"}),
    ({"tags": "gpu,a/b"}, {"tags": "invalid format - invalid characters in tag\n"}),
    ({"delete": "dev0,9x"}, {"delete": "invalid format - invalid configuration ID '9x'\n"}),
    ({"hostname": "bad_name"}, {"hostname": "invalid format - value does not look like a valid DNS name\n"}),
    ({"startup": "order=1,up=x"}, {"startup": "invalid format - unable to parse startup options\n"}),
    ({"digest": "x" * 41}, {"digest": "value may only be 40 characters long"}),
])
def test_config_put_messages(version: str, params: dict, expected: dict) -> None:
    assert validate(version, "PUT", CONFIG, params) == expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("params", [
    {"dev0": "/dev/nvidia0,gid=44"},
    {"dev1": "path=/dev/nvidia-uvm,deny-write=1,mode=0666,uid=0"},
    {"dev255": "/dev/dri/renderD128"},
    {"net0": "name=eth0,bridge=vmbr0,ip=dhcp,ip6=auto,hwaddr=BC:24:11:00:00:01,firewall=1"},
    {"net1": "name=eth1,bridge=vmbr1,ip=10.0.0.5/24,gw=10.0.0.1,tag=20"},
    {"mp0": "/srv/models,mp=/models,ro=1"},
    {"mp1": "local-lvm:32,mp=/data,backup=0"},
    {"rootfs": "local-lvm:8,mountoptions=noatime;nodev"},
    {"features": "nesting=1,keyctl=1"},
    {"tags": "GPU;llm test"},
    {"nameserver": "1.1.1.1 2606:4700::1111"},
    {"startup": "order=2,up=30"},
    {"delete": "dev0,mp1;swap", "digest": "a" * 40},
    {"memory": 16384, "swap": 0, "cores": 8, "onboot": True},
])
def test_config_put_accepts(version: str, params: dict) -> None:
    assert validate(version, "PUT", CONFIG, params) == {}


def test_path_parameters_are_validated() -> None:
    assert validate("9.1", "GET", "/nodes/bad_node/lxc/12/config", {}) == {
        "node": "invalid format - value does not look like a valid node name\n",
        "vmid": "invalid format - value does not look like a valid VM ID\n",
    }


def test_missing_required_parameter() -> None:
    errors = validate("9.1", "POST", "/nodes/pve/lxc", {})
    assert errors["ostemplate"] == "property is missing and it is not optional"
    assert errors["vmid"] == "property is missing and it is not optional"


def test_version_differences_are_real() -> None:
    """PVE 9 knows net ``host-managed``; PVE 8 rejects it as an unknown key."""
    value = {"net0": "name=eth0,bridge=vmbr0,host-managed=1"}
    assert validate("9.1", "PUT", CONFIG, value) == {}
    assert validate("8.4", "PUT", CONFIG, value) == {
        "net0": "invalid format - invalid key in comma-separated list property: host-managed\n"}


def test_unknown_endpoint() -> None:
    with pytest.raises(UnknownEndpoint):
        validate("9.1", "GET", "/nodes/pve/qemu", {})
    with pytest.raises(UnknownEndpoint):
        validate("9.1", "PATCH", CONFIG, {})


def test_schema_loads_as_package_data() -> None:
    data = load("8.4")
    assert data["source"] == "pve-8.4.2-apidata.json"
    assert "/nodes/{node}/lxc/{vmid}/config" in data["endpoints"]


def test_parse_property_string_normalises_booleans() -> None:
    assert parse_property_string("dev0", "/dev/nvidia0,gid=44,deny-write=yes") == {
        "path": "/dev/nvidia0", "gid": "44", "deny-write": "1"}
    assert parse_property_string("dev3", "path=/dev/nvidia-uvm") == {"path": "/dev/nvidia-uvm"}


def test_parse_property_string_errors() -> None:
    with pytest.raises(PropertyStringError) as exc:
        parse_property_string("dev0", "/dev/nvidia0,gid=abc")
    assert exc.value.errors == {"dev0.gid": "type check ('integer') failed - got 'abc'"}
    assert str(exc.value) == "format error\ndev0.gid: type check ('integer') failed - got 'abc'\n"
    with pytest.raises(PropertyStringError, match="value without key, but schema does not define"):
        parse_property_string("features", "nesting")


def test_format_property_string_like_pve() -> None:
    """Default key bare and first, required keys next, the rest sorted."""
    assert format_property_string("dev0", {"gid": 44, "path": "/dev/nvidia0", "mode": "0666"}) == \
        "/dev/nvidia0,gid=44,mode=0666"
    assert format_property_string("net0", {"bridge": "vmbr0", "ip": "dhcp", "name": "eth0",
                                           "firewall": True}) == "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp"
    assert format_property_string("mp0", {"mp": "/models", "volume": "/srv/models", "ro": "1"}) == \
        "/srv/models,mp=/models,ro=1"
    with pytest.raises(PropertyStringError, match="illegal value with commas for gid"):
        format_property_string("dev0", {"path": "/dev/x", "gid": "1,2"})


def test_round_trip_parse_format() -> None:
    value = "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth"
    assert format_property_string("net0", parse_property_string("net0", value)) == value


def test_indexed_key_bounds() -> None:
    assert config_format("9.1", "dev255") is not None
    assert config_format("9.1", "dev256") is None
    assert config_format("9.1", "net31") is not None
    assert config_format("9.1", "net32") is None
    assert config_format("9.1", "mp07") is None


def test_normalise_for_diffing() -> None:
    from provisioner.pveschema import normalise_property_string
    assert normalise_property_string("dev0", "gid=44,path=/dev/nvidia0,deny-write=no") == \
        "/dev/nvidia0,deny-write=0,gid=44"
    assert normalise_property_string(
        "net0", "bridge=vmbr0,name=eth0,type=veth,hwaddr=BC:24:11:00:00:01,ip=dhcp",
        ignore=("hwaddr", "type")) == "name=eth0,bridge=vmbr0,ip=dhcp"


def test_public_surface() -> None:
    import provisioner.pveschema as ps
    assert sorted(ps.__all__) == sorted(n for n in dir(ps) if not n.startswith("_")
                                        and n not in ("formats", "propstring", "schema", "validator"))


def test_server_versions_map_to_the_shipped_schema() -> None:
    from provisioner.pveschema import resolve_version
    assert [resolve_version(v) for v in ("8.4.2", "8.3", "9.1.3", "9.0.11", "9")] == \
        ["8.4", "8.4", "9.1", "9.1", "9.1"]
    with pytest.raises(ValueError, match="unknown PVE version '7.4'"):
        resolve_version("7.4")
    assert validate("9.0.5", "PUT", CONFIG, {"dev0": "/dev/nvidia0"}) == {}
