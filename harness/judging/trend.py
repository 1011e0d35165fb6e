"""The trend test soak and explore share: does a series of counts keep growing?

A least-squares slope with its 95 % confidence interval (moved here from soak's
stats, which now re-exports it), and the test on it: the interval above zero and
the growth over a floor (`rises`, soak's flags); explore asks more of a series
taken across batches on one Kamailio (`keeps_rising`): enough samples and never
down between two, so a one-time cache or a transient that comes and goes is not
a trend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % Student t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
        40: 2.021, 60: 2.000, 120: 1.980}


def t95(dof: int) -> float:
    if dof <= 0:
        return float("inf")
    for k in sorted(_T95):
        if dof <= k:
            return _T95[k]
    return 1.960


@dataclass
class Fit:
    """y = intercept + slope * x over N points; slope ± half_width is the 95 % interval."""

    slope: float
    intercept: float
    stderr: float | None
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.slope - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.slope + self.half_width

    def excludes_zero(self) -> bool:
        return self.half_width is not None and (self.low > 0 or self.high < 0)

    def describe(self, unit: str = "", digits: int = 4) -> str:
        if self.half_width is None:
            return f"{self.slope:.{digits}g}{unit}"
        return f"{self.slope:.{digits}g} ± {self.half_width:.{digits}g}{unit}"

    def as_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "stderr": self.stderr,
                "ci95": [self.low, self.high] if self.half_width is not None else None, "n": self.n}


def ols(xs: list[float], ys: list[float]) -> Fit | None:
    """Ordinary least squares (numpy's lstsq when installed, else by hand)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    try:
        import numpy as np
        x = np.asarray(xs, dtype=float)
        y = np.asarray(ys, dtype=float)
        a = np.vstack([x, np.ones(n)]).T
        (slope, intercept), *_ = np.linalg.lstsq(a, y, rcond=None)
        resid = y - (slope * x + intercept)
        sse = float(resid @ resid)
        sxx = float(((x - x.mean()) ** 2).sum())
        slope, intercept = float(slope), float(intercept)
    except ImportError:
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        intercept = my - slope * mx
        sse = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    if n < 3:
        return Fit(slope, intercept, None, None, n)
    se = math.sqrt(sse / (n - 2) / sxx) if sxx > 0 else 0.0
    return Fit(slope, intercept, se, t95(n - 2) * se, n)


def rises(fit: Fit | None, growth: float, floor: float = 0) -> bool:
    """Soak's test: the slope's 95 % interval lies above zero and the series grew by more than FLOOR."""
    return fit is not None and fit.excludes_zero() and fit.slope > 0 and growth > floor


# Explore's: at least this many samples after the first batch (one-time growth
# lands in the first batch, which the series starts after).
MIN_POINTS = 5


def keeps_rising(ys: list[float], floor: float, min_points: int = MIN_POINTS) -> Fit | None:
    """The fit of YS (one sample per batch) when it keeps rising, else None:
    MIN_POINTS samples or more, never lower than the one before, higher than the
    one before in at least half the steps and in the last third of them (a cache
    filled once, or in a few steps early on, is flat by then), and `rises` over FLOOR."""
    if len(ys) < min_points or any(b < a for a, b in zip(ys, ys[1:])):
        return None
    ups = [b > a for a, b in zip(ys, ys[1:])]
    if sum(ups) * 2 < len(ups) or not any(ups[-max(1, -(-len(ups) // 3)):]):
        return None
    fit = ols(list(range(len(ys))), [float(y) for y in ys])
    return fit if rises(fit, ys[-1] - ys[0], floor) else None
