"""The number helpers every stage shares: one finite-or-None test and one short human format. No torch, no
numpy needed (numpy scalars work through ``float``).

They live at the top of the package, not in a stage, because the write side (``measure``), the log
(``store``), the rules (``judge``) and the reporters (``show``) all need the same answer to "is this a
number I may print or write to JSON?" — two helpers that disagree on ``"1e400"`` or ``np.float32('nan')``
would make a finding's message and the report's table show different values.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "–"
"""What a missing or non-finite number prints as (an en dash: a hyphen would read as a minus sign)."""


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else ``None`` (NaN, ±Inf, ``None``, not a number).

    JSON has no NaN or Inf, so this is what is written for them (``null``); it accepts Python and numpy
    scalars, and anything ``float()`` takes, without raising.
    """
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def fmt_num(x: Any) -> str:
    """Short human form: 3 significant digits, scientific outside [1e-3, 1e4), a dash for missing/NaN/Inf.
    Findings' messages and the report's tables both use it."""
    f = finite(x)
    if f is None:
        return DASH
    if f != 0 and not 1e-3 <= abs(f) < 1e4:
        return f"{f:.2e}"
    return f"{f:.3g}"


def fmt_pct(x: Any) -> str:
    """A percentage (already scaled to 0–100) with one decimal, a dash for missing/NaN/Inf."""
    f = finite(x)
    return DASH if f is None else f"{f:.1f}%"
