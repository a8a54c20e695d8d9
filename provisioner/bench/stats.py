"""Median and spread of a handful of runs.

Few samples (3-10), so: the median as the figure, min/max as the honest spread,
the population-free sample standard deviation, and p10/p90 by linear interpolation
between order statistics (the same definition as numpy's default and Excel's PERCENTILE.INC).
Missing values (a run without a measurement) are left out and counted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, interpolating linearly."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0..1")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """n, missing, median, mean, min, max, p10, p90, stdev (None where undefined)."""
    all_values = list(values)
    xs = sorted(float(v) for v in all_values if v is not None and math.isfinite(v))
    missing = len(all_values) - len(xs)
    if not xs:
        return {"n": 0, "missing": missing, "median": None, "mean": None, "min": None, "max": None,
                "p10": None, "p90": None, "stdev": None}
    return {"n": len(xs), "missing": missing, "median": statistics.median(xs), "mean": statistics.fmean(xs),
            "min": xs[0], "max": xs[-1], "p10": percentile(xs, 0.1), "p90": percentile(xs, 0.9),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}
