"""The toolkit / architecture / driver matrix (REFERENCE §3), including refusals."""

from __future__ import annotations

import pytest

from provisioner import cuda_matrix as m
from provisioner.errors import ConfigError


@pytest.mark.parametrize("driver, ccs, expected", [
    ("580.95.05", ["8.9"], "13.0"),          # 13.1 needs 590.44.01
    ("595.71.05", ["8.9"], "13.2"),
    ("590.44.01", ["12.0"], "13.1"),
    ("550.54.14", ["8.9"], "12.4"),          # 12.8 needs 570.26
    ("570.26", ["12.0"], "12.8"),
    ("575.51.03", ["12.1"], "12.9"),
    ("595.71.05", ["6.1"], "12.9"),          # Pascal: newest 12.x, CUDA 13 dropped it
    ("595.71.05", ["7.0", "8.9"], "12.9"),   # one old GPU decides for all
    ("525.60.13", ["8.6"], "12.0"),
])
def test_auto_picks_newest_fitting(driver: str, ccs: list[str], expected: str) -> None:
    assert m.choose_toolkit(driver, ccs) == expected


def test_available_toolkits_narrow_the_choice() -> None:
    assert m.choose_toolkit("595.71.05", ["8.9"], available=["12.8", "13.0"]) == "13.0"


def test_override_that_fits_is_kept() -> None:
    assert m.choose_toolkit("595.71.05", ["8.9"], "12.8") == "12.8"


def test_cuda13_on_pascal_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("595.71.05", ["6.1"], "13.0")
    assert str(e.value) == ("cuda.toolkit: CUDA 13.0 does not fit this host: CUDA 13.0 and later cannot build for "
                            "compute capability 6.1 (GTX 10xx, P40)\n"
                            "  fix: set cuda.toolkit: auto (picks the newest that fits)")


def test_cuda128_on_550_driver_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("550.54.14", ["8.9"], "12.8")
    assert "CUDA 12.8 needs host driver ≥ 570.26, the host runs 550.54.14" in str(e.value)


def test_blackwell_on_old_driver_has_no_toolkit() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("550.54.14", ["12.0"])
    assert str(e.value).startswith("cuda.toolkit: no CUDA toolkit fits driver 550.54.14 and compute capabilities 12.0")


def test_unknown_override_and_unknown_cc() -> None:
    with pytest.raises(ConfigError, match="CUDA 11.2 is not a known toolkit"):
        m.choose_toolkit("595.71.05", ["8.9"], "11.2")
    with pytest.raises(ConfigError, match="unknown compute capability 3.5"):
        m.choose_toolkit("595.71.05", ["3.5"])


def test_architectures() -> None:
    assert m.architectures(["8.9"]) == ["89"]
    assert m.architectures(["12.0", "8.6", "8.6", "12.1"]) == ["86", "120a", "121a"]
    assert m.architectures(["7.5", "10.0"]) == ["75", "100"]


def test_packages() -> None:
    assert m.toolkit_packages("13.0") == ["cuda-nvcc-13-0", "cuda-cudart-dev-13-0", "libcublas-dev-13-0"]


def test_driver_version_compare() -> None:
    assert m.driver_supports("13.0", "580.65.06") and not m.driver_supports("13.0", "580.65.05")
    assert m.driver_supports("12.8", "570.26") and m.driver_supports("12.8", "570.26.1")
