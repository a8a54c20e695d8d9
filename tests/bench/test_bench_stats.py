"""The statistics of a handful of runs, checked against values worked out by hand."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.bench.stats import percentile, summarize


def test_percentile_interpolates_between_order_statistics():
    xs = [10.0, 20.0, 30.0, 40.0]
    # position (n-1)*q: 0.3 -> 10 + 0.3*10; 2.7 -> 30 + 0.7*10
    assert percentile(xs, 0.1) == pytest.approx(13.0)
    assert percentile(xs, 0.9) == pytest.approx(37.0)
    assert percentile(xs, 0.5) == pytest.approx(25.0)
    assert percentile(xs, 0.0) == 10.0 and percentile(xs, 1.0) == 40.0
    assert percentile([7.0], 0.9) == 7.0


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_summarize_odd_and_even():
    s = summarize([3.0, 1.0, 2.0])
    assert s == {"n": 3, "missing": 0, "median": 2.0, "mean": 2.0, "min": 1.0, "max": 3.0,
                 "p10": pytest.approx(1.2), "p90": pytest.approx(2.8), "stdev": pytest.approx(1.0)}
    s = summarize([4.0, 1.0, 2.0, 3.0])
    assert s["median"] == 2.5 and s["stdev"] == pytest.approx(statistics.stdev([1, 2, 3, 4]))


def test_summarize_leaves_out_missing_and_non_finite():
    s = summarize([None, 5.0, math.nan, 7.0, math.inf])
    assert s["n"] == 2 and s["missing"] == 3 and s["median"] == 6.0 and s["min"] == 5.0 and s["max"] == 7.0


def test_summarize_single_and_empty():
    assert summarize([4.5])["stdev"] == 0.0 and summarize([4.5])["median"] == 4.5
    empty = summarize([None, None])
    assert empty["n"] == 0 and empty["missing"] == 2 and empty["median"] is None and empty["stdev"] is None


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=30))
def test_order_holds_for_any_sample(xs):
    s = summarize(xs)
    eps = 1e-6 * (1 + max(abs(x) for x in xs))
    assert s["min"] - eps <= s["p10"] <= s["median"] + eps
    assert s["median"] - eps <= s["p90"] <= s["max"] + eps
    assert s["min"] - eps <= s["mean"] <= s["max"] + eps
    assert s["stdev"] >= 0
