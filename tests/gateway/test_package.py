"""The gateway package's public surface and its layout rules."""

from __future__ import annotations

from pathlib import Path

import provisioner.gateway as gateway


def test_public_names():
    assert gateway.__all__ == ["GatewaySettings", "build_app", "load_settings"]
    for name in gateway.__all__:
        assert getattr(gateway, name).__doc__


def test_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(gateway.__file__).parent.glob("*.py")}
    assert max(sizes.values()) <= 320, sizes
