"""A recorded step: the per-layer statistics on the device, ONE transfer to the host, the record's rows.

The order of a layer row is the log schema's ``LAYER_FIELDS`` (the header lists it) and nothing else: the
device side stacks the raw sums in the order of ``RawLayer`` (declared once, below), the host side names
them, derives each ``LAYER_FIELDS`` entry by name and lays the row out in ``LAYER_FIELDS`` order. Adding a
statistic is one ``RawLayer`` field and one entry in ``layer_row``; a schema field without a derivation
fails every record (and the tests) with a ``KeyError`` naming it. Parameter rows likewise follow
``PARAM_FIELDS``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from gradscope.measure.reductions import LayerAcc, accumulate_grad, accumulate_output
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS

_F32 = torch.float32


class RawLayer(NamedTuple):
    """What one layer's row is computed from, in the order it is stacked on the device and transferred: 0-d
    tensors on the device, floats on the host."""

    s: Any           # Σx over every output element of the step
    ss: Any          # Σx²
    lo: Any          # min x
    hi: Any          # max x
    nonzero: Any     # elements != 0
    nonfinite: Any   # NaN/Inf elements
    units: Any       # units (features or channels)
    inactive: Any    # units never positive this step
    dead: Any        # units never positive in the last ``dead_window`` records (NaN: window not full yet)
    saturated: Any   # units whose mean normalized derivative is below the threshold (NaN: no derivative)
    dmean: Any       # mean normalized derivative over units (NaN: no derivative)
    gsq: Any         # Σ (dL/d output)² (NaN: no output gradient this step)


RAW_FIELDS: tuple[str, ...] = RawLayer._fields


Row = tuple[float | int | None, ...]


def finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _count(v: float) -> int | None:
    """A count from the transfer (a float64): None when it is NaN (not measured)."""
    return int(v) if math.isfinite(v) else None


def layer_row(raw: RawLayer, count: int, calls: int) -> Row:
    """One layer's row of a step record, in ``LAYER_FIELDS`` order."""
    n = max(count, 1)
    mean = raw.s / n
    var = max(raw.ss / n - mean * mean, 0.0) if math.isfinite(raw.ss) and math.isfinite(mean) else math.nan
    gsq = raw.gsq
    named: dict[str, float | int | None] = {
        "count": count,
        "mean": finite(mean),
        "var": finite(var),
        "absmax": finite(max(abs(raw.lo), abs(raw.hi))),
        "zero_frac": 1.0 - raw.nonzero / n,
        "nonfinite": _count(raw.nonfinite),
        "units": _count(raw.units),
        "inactive": _count(raw.inactive),
        "dead": _count(raw.dead),
        "saturated": _count(raw.saturated),
        "dmean": finite(raw.dmean),
        "grad_norm": finite(math.sqrt(gsq)) if math.isfinite(gsq) and gsq >= 0 else None,
        "calls": calls,
    }
    return tuple(named[f] for f in LAYER_FIELDS)


def param_row(grad_norm: float | None, norm: float | None, delta: float | None,
              before: float | None) -> tuple[float | None, ...] | None:
    """One parameter's row of a step record, in ``PARAM_FIELDS`` order (None: nothing measured)."""
    if grad_norm is None and norm is None:
        return None
    named: dict[str, float | None] = {
        "grad_norm": finite(grad_norm),
        "norm": finite(norm),
        "update_ratio": finite(delta / before) if delta is not None and before is not None and before > 0 else None,
        "grad_nonfinite": None if grad_norm is None else float(not math.isfinite(grad_norm)),
    }
    return tuple(named[f] for f in PARAM_FIELDS)


class Transfer:
    """Everything a record needs from the device, moved to the host in ONE copy (``fetch``)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._pieces: list[torch.Tensor] = []
        self._keys: list[tuple[Hashable, int]] = []

    def add(self, key: Hashable, t: torch.Tensor) -> None:
        t = t.detach().reshape(-1).to(device=self._device, dtype=torch.float64)
        self._pieces.append(t)
        self._keys.append((key, t.numel()))

    def fetch(self) -> dict[Hashable, list[float]]:
        values = torch.cat(self._pieces).tolist() if self._pieces else []   # the one host transfer
        out: dict[Hashable, list[float]] = {}
        off = 0
        for key, n in self._keys:
            out[key] = values[off:off + n]
            off += n
        self._pieces, self._keys = [], []
        return out


class LayerStats:
    """The per-layer statistics of the current recorded step (``acc``, in the order layers were first called)
    and, across records, when each unit was last active (for dead units)."""

    def __init__(self, *, dead_window: int, saturation_derivative: float) -> None:
        self.dead_window = dead_window
        self.saturation_derivative = saturation_derivative
        self.acc: dict[int, LayerAcc] = {}
        self._last_active: dict[int, torch.Tensor] = {}   # layer → (units,) record index a unit last fired

    def reset(self) -> None:
        self.acc = {}

    def add_output(self, index: int, x: torch.Tensor, *, unit_dim: int, act: str | None) -> None:
        with torch.no_grad():
            accumulate_output(self.acc.setdefault(index, LayerAcc()), x, unit_dim=unit_dim, act=act)

    def add_grad(self, index: int, g: torch.Tensor) -> None:
        acc = self.acc.get(index)
        if acc is not None:
            with torch.no_grad():
                accumulate_grad(acc, g)

    def extremes(self) -> tuple[list[int], list[torch.Tensor]]:
        """(layer indices, min and max of their outputs so far this step), two per layer in call order: a
        min/max is non-finite exactly when the output held a NaN/Inf (and never overflows), which makes them
        the recorded step's NaN/Inf check of every layer, at no extra reduction."""
        ids: list[int] = []
        values: list[torch.Tensor] = []
        for i, a in self.acc.items():
            if a.lo is not None and a.hi is not None:
                ids += [i, i]
                values += [a.lo, a.hi]
        return ids, values

    def device(self) -> torch.device | None:
        for acc in self.acc.values():
            if acc.s is not None:
                return acc.s.device
        return None

    def add_vectors(self, transfer: Transfer, record_index: int, device: torch.device) -> None:
        """Each called layer's ``RawLayer`` vector, for the record's transfer (keys ``("layer", index)``)."""
        for i in sorted(self.acc):
            transfer.add(("layer", i), self._vector(i, self.acc[i], record_index, device))

    def rows(self, fetched: Mapping[Hashable, list[float]], n_layers: int) -> list[Row | None]:
        """Every header layer's row (None: not called this step) from the fetched ``RawLayer`` vectors."""
        out: list[Row | None] = [None] * n_layers
        for i, acc in self.acc.items():
            chunk = fetched.get(("layer", i))
            if chunk is not None:
                out[i] = layer_row(RawLayer(*chunk), acc.count, acc.calls)
        return out

    def _vector(self, i: int, acc: LayerAcc, record_index: int, dev: torch.device) -> torch.Tensor:
        nan = torch.tensor(math.nan, device=dev)
        assert acc.unit_max is not None and acc.s is not None
        assert acc.ss is not None and acc.lo is not None and acc.hi is not None
        assert acc.nonzero is not None and acc.nonfinite is not None
        units = acc.unit_max.numel()
        active = acc.unit_max > 0
        inactive = (~active).sum()
        last = self._last_active.get(i)
        if last is None or last.numel() != units:
            last = torch.full((units,), -1, dtype=torch.int64, device=acc.unit_max.device)
        last = torch.where(active, record_index, last)
        self._last_active[i] = last
        # Before the window has filled there is not enough evidence to call a unit dead.
        enough = record_index + 1 >= self.dead_window
        dead = ((record_index - last) >= self.dead_window).sum() if enough else nan
        if acc.unit_dsum is not None and acc.unit_n:
            per_unit = acc.unit_dsum / acc.unit_n
            saturated = (per_unit < self.saturation_derivative).sum()
            dmean = per_unit.mean()
        else:
            saturated = dmean = nan
        raw = RawLayer(s=acc.s, ss=acc.ss, lo=acc.lo, hi=acc.hi, nonzero=acc.nonzero, nonfinite=acc.nonfinite,
                       units=torch.tensor(float(units), device=dev), inactive=inactive, dead=dead,
                       saturated=saturated, dmean=dmean, gsq=acc.gsq if acc.gsq is not None else nan)
        # One stack per layer; dtype conversion only where a value is not fp32 already (counts are int64).
        return torch.stack([v if v.dtype == _F32 else v.float() for v in raw])

    def clear(self) -> None:
        self.acc = {}
        self._last_active.clear()


def param_rows(n_params: int, grad: tuple[Sequence[int], list[float]] | None,
               updates: tuple[list[float], list[float], list[float]] | None) -> list[tuple[float | None, ...] | None]:
    """Every parameter's row: ``grad`` = (parameter indices, their gradient norms); ``updates`` = (weight
    norms, ||Δ sample||, ||sample before||), one value per parameter."""
    g: list[float | None] = [None] * n_params
    if grad is not None:
        for j, v in zip(grad[0], grad[1], strict=True):
            g[j] = v
    norm, delta, before = updates if updates is not None else (None, None, None)
    return [param_row(g[j], norm[j] if norm is not None else None, delta[j] if delta is not None else None,
                      before[j] if before is not None else None) for j in range(n_params)]
