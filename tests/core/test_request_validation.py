"""The client validates every request against the server's own PVE schema before sending it."""

from __future__ import annotations

import socket

import pytest

from provisioner.connectors.pve import PVE, Credentials, Endpoint
from provisioner.engine.run import pve_validator
from provisioner.errors import ProvisionError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pve() -> PVE:
    # nothing listens here: a request that got past validation fails to connect instead
    return PVE(Endpoint(host="127.0.0.1", port=_closed_port(), insecure=True, timeout=2),
               Credentials(token_id="root@pam!t", token_secret="s3cret"), validator=pve_validator)


@pytest.mark.parametrize("version", ["8.4", "9.1"])
def test_a_request_outside_the_schema_is_refused_before_it_is_sent(version):
    pve = _pve()
    pve.schema_version = version
    with pytest.raises(ProvisionError) as err:
        pve.put("/nodes/pve/lxc/120/config", cores="many", dev0="/dev/nvidia0,mode=0666,bogus=1")
    text = str(err.value)
    assert "does not match the PVE API schema" in text
    assert "cores" in getattr(err.value, "errors", {}) and "dev0" in getattr(err.value, "errors", {})


def test_a_valid_request_goes_out():
    pve = _pve()
    pve.schema_version = "9.1"
    with pytest.raises(ProvisionError) as err:
        pve.put("/nodes/pve/lxc/120/config", cores=4, dev0="/dev/nvidia0,mode=0666")
    assert "does not match the PVE API schema" not in str(err.value)  # it failed at the network


def test_nothing_is_checked_before_the_server_version_is_known():
    pve = _pve()
    assert pve.schema_version is None
    with pytest.raises(ProvisionError) as err:
        pve.put("/nodes/pve/lxc/120/config", cores="many")
    assert "does not match the PVE API schema" not in str(err.value)
