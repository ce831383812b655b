"""A finding's ``confidence``: a documented function of its evidence. No torch, no scipy.

A rule that fires has passed its thresholds; how far past them, on how much data and with how many signals
agreeing says how sure it is. The building blocks below each map evidence to a *strength* in [0, 1] that never
decreases as the evidence gets stronger; a rule combines its strengths and turns the result into a confidence
with ``confidence``:

- ``support(hits, total, level)``: the Wilson score lower bound (Wilson 1927) on the fraction of steps (layers,
  evaluations) where the condition held, so 3 of 3 steps (0.53 at 95 %) is less certain than 300 of 300 (0.99);
- ``ratio_margin(value, threshold)``: how far an unbounded statistic (a ratio, a scale) is past its threshold on
  a log scale, 1 − threshold / value = 1 − exp(−log(value / threshold)): 0 at the threshold, ½ at twice it, 0.9
  at ten times it;
- ``fraction_margin(value, threshold, top)``: how far a bounded statistic (a fraction of units, of steps) is
  past its threshold, as the share of the way from the threshold to its extreme ``top``;
- ``agree(*strengths)``: independent signals that agree, 1 − Π(1 − sᵢ) (a "noisy or"): a second signal only
  ever adds;
- ``mean(*strengths)``: the aspects of one signal (its margin and its support), each counted alike.

``confidence(strength, floor)`` is floor + (1 − floor) × strength: ``Thresholds.confidence_floor`` (½) for a
finding whose evidence sits at its thresholds with the least data the rule accepts, 1 only for overwhelming
evidence. All of it is closed-form arithmetic on a handful of counts and medians: deterministic and cheap.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def _unit(x: float) -> float:
    """x clipped to [0, 1]; NaN → 0 (no evidence)."""
    return min(1.0, max(0.0, x)) if math.isfinite(x) else (1.0 if x == math.inf else 0.0)


def support(hits: int, total: int, level: float) -> float:
    """Wilson score lower bound, at one-sided ``level``, of the fraction ``hits / total``; 0 when ``total`` is 0.

    Rises with the fraction and, for the same fraction, with ``total``: k/k gives k / (k + z²)
    (z = 1.645 at 95 %: 3/3 → 0.53, 30/30 → 0.92, 300/300 → 0.99).

    >>> round(support(3, 3, 0.95), 3), round(support(300, 300, 0.95), 3)
    (0.526, 0.991)
    """
    if total <= 0:
        return 0.0
    k, n = min(max(int(hits), 0), int(total)), int(total)
    z = NormalDist().inv_cdf(level)
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return _unit((centre - half) / (1 + z2 / n))


def ratio_margin(value: float, threshold: float) -> float:
    """How far a positive ``value`` is beyond a positive ``threshold`` it must exceed, on a log scale:
    1 − threshold / value, 0 at (or below) the threshold, → 1 as the value grows. For a statistic that must
    stay *below* its threshold, pass both inverted (``ratio_margin(1 / v, 1 / t)``, i.e. 1 − v / t)."""
    if not (value > 0 and threshold > 0):
        return 0.0
    return _unit(1.0 - threshold / value)


def fraction_margin(value: float, threshold: float, top: float = 1.0) -> float:
    """How far ``value`` is past ``threshold`` towards the extreme ``top`` of its range, (value − threshold) /
    (top − threshold), clipped to [0, 1]; ``top`` may lie below the threshold (a statistic that must fall)."""
    span = top - threshold
    if span == 0:
        return 1.0 if value == top else 0.0
    return _unit((value - threshold) / span)


def agree(*strengths: float) -> float:
    """Strength of independent signals that agree: 1 − Π(1 − sᵢ) (0 with none)."""
    miss = 1.0
    for s in strengths:
        miss *= 1.0 - _unit(s)
    return 1.0 - miss


def mean(*strengths: float) -> float:
    """The average strength of a signal's aspects (0 with none)."""
    return sum(_unit(s) for s in strengths) / len(strengths) if strengths else 0.0


def confidence(strength: float, floor: float) -> float:
    """floor + (1 − floor) × strength: ``floor`` at the thresholds, 1 for overwhelming evidence."""
    f = _unit(floor)
    return f + (1.0 - f) * _unit(strength)
