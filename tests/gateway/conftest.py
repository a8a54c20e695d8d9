"""Fixtures for the gateway tests: a real scripted upstream and the real gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gw_harness import Harness  # noqa: E402


@pytest.fixture
def gw(tmp_path):
    """Gateway (translate mode, 5 s pings) in front of a scripted upstream."""
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def make_gw(tmp_path):
    """Factory for a gateway with other settings: ``make_gw(mode="native", ping_interval_s=0.2)``."""
    made: list[Harness] = []

    def make(**overrides) -> Harness:
        made.append(Harness(tmp_path, **overrides))
        return made[-1]

    yield make
    for harness in made:
        harness.close()
