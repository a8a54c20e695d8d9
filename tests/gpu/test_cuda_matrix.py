"""The toolkit / architecture / driver matrix (REFERENCE §3, corrected), including refusals and
the rule (own minimum, else minor-version compatibility) that picks each toolkit."""

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
    ("560.35.03", ["8.9"], "12.6"),
    ("555.42.06", ["8.6"], "12.5"),
    ("545.23.08", ["8.6"], "12.3"),
])
def test_auto_picks_newest_by_own_minimum(driver: str, ccs: list[str], expected: str) -> None:
    choice = m.pick_toolkit(driver, ccs)
    assert (choice.version, choice.rule) == (expected, m.OWN_MINIMUM)


@pytest.mark.parametrize("driver, ccs, expected", [
    ("535.247.01", ["6.1"], "12.9"),   # GTX 1080 on the 535 LTS branch: every 12.3+ needs 545+ by its own
    ("535.247.01", ["8.9"], "12.9"),
    ("525.60.13", ["8.6"], "12.9"),    # the 12.x floor itself
])
def test_minor_version_compatibility_when_no_own_minimum_fits(driver: str, ccs: list[str], expected: str) -> None:
    choice = m.pick_toolkit(driver, ccs)
    assert (choice.version, choice.rule) == (expected, m.MINOR_COMPAT)
    assert choice.why.startswith(f"minor-version compatibility: driver {driver} ≥ 525.60.13 (CUDA 12.x floor)")
    # narrowed to what the repository offers, the rule still picks the newest offered 12.x
    assert m.pick_toolkit(driver, ccs, available=["12.3", "12.5", "12.6", "13.0"]).version == "12.6"


def test_no_toolkit_below_the_floor() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("520.61.05", ["8.6"])
    assert "12.3: CUDA 12.3 needs host driver ≥ 525.60.13 (its own minimum is 545.23.06)" in str(e.value)


def test_repository_starts_at_12_3() -> None:
    assert min(m.TOOLKITS, key=m.vtuple) == "12.3" and {"12.5", "12.6"} <= set(m.TOOLKITS)
    with pytest.raises(ConfigError, match="CUDA 12.0 is not a known toolkit .* start at 12.3"):
        m.choose_toolkit("595.71.05", ["8.9"], "12.0")


def test_override_not_in_the_repository_is_refused() -> None:
    with pytest.raises(ConfigError, match="CUDA 12.8 is not in NVIDIA's repository"):
        m.choose_toolkit("595.71.05", ["8.9"], "12.8", available=["12.9", "13.0"])


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


def test_cuda13_on_a_12x_driver_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("575.51.03", ["8.9"], "13.0")
    assert "CUDA 13.0 needs host driver ≥ 580.65.06 (its own minimum is 580.65.06), the host runs 575.51.03" \
        in str(e.value)


def test_override_by_minor_version_compatibility_is_kept() -> None:
    assert m.pick_toolkit("550.54.14", ["8.9"], "12.8") == m.ToolkitChoice("12.8", m.MINOR_COMPAT, "550.54.14")


def test_blackwell_on_old_driver_has_no_toolkit() -> None:
    with pytest.raises(ConfigError) as e:
        m.choose_toolkit("520.61.05", ["12.0"])
    assert str(e.value).startswith("cuda.toolkit: no CUDA toolkit fits driver 520.61.05 and compute capabilities 12.0")


def test_unknown_override_and_unknown_cc() -> None:
    with pytest.raises(ConfigError, match="CUDA 11.2 is not a known toolkit"):
        m.choose_toolkit("595.71.05", ["8.9"], "11.2")
    with pytest.raises(ConfigError, match="unknown compute capability 3.5"):
        m.choose_toolkit("595.71.05", ["3.5"])


def test_architectures() -> None:
    # SASS only ("-real"): no PTX that minor-version compatibility could not JIT
    assert m.architectures(["8.9"]) == ["89-real"]
    assert m.architectures(["12.0", "8.6", "8.6", "12.1"]) == ["86-real", "120a-real", "121a-real"]
    assert m.architectures(["7.5", "10.0"]) == ["75-real", "100-real"]
    assert [m.arch_number(a) for a in ("120a-real", "89", "120a")] == [120, 89, 120]


def test_packages() -> None:
    assert m.toolkit_packages("13.0") == ["cuda-nvcc-13-0", "cuda-cudart-dev-13-0", "cuda-cccl-13-0",
                                          "libcublas-dev-13-0"]


def test_driver_version_compare() -> None:
    assert m.driver_supports("13.0", "580.65.06") and not m.driver_supports("13.0", "580.65.05")
    assert m.driver_supports("12.8", "570.26") and m.driver_supports("12.8", "570.26.1")
    assert m.rule_for("12.8", "535.247.01") == m.MINOR_COMPAT and m.rule_for("12.8", "520.1") is None
    assert m.min_driver("12.9") == "525.60.13" and m.min_driver("13.1") == "580.65.06"
