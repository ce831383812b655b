"""A recorded step: the per-layer statistics on the device, ONE transfer to the host, the record's rows.

The order of a layer row is the log schema's ``LAYER_FIELDS`` (the header lists it) and nothing else: the
device side builds every layer's raw sums as one matrix in ``reductions.RAW_LAYER_COLUMNS`` order
(``reductions.layer_matrix``, a constant number of ops whatever the depth), the host side names each column
from that same tuple, derives each ``LAYER_FIELDS`` entry by name and lays the row out in ``LAYER_FIELDS``
order. Adding a statistic is one raw column and one entry in ``layer_row``; a schema field without a
derivation fails every record (and the tests) with a ``KeyError`` naming it. Parameter rows likewise follow
``PARAM_FIELDS``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch

from gradscope._numbers import finite
from gradscope.measure.reductions import (
    RAW_LAYER_COLUMNS,
    LayerAcc,
    accumulate_grad,
    accumulate_output,
    layer_matrix,
)
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS

RawLayer = Mapping[str, float]
"""One layer's raw sums on the host, by ``RAW_LAYER_COLUMNS`` name (NaN: not measured)."""


Row = tuple[float | int | None, ...]




def _count(v: float) -> int | None:
    """A count from the transfer (a float64): None when it is NaN (not measured)."""
    return int(v) if math.isfinite(v) else None


def layer_row(raw: RawLayer, count: int, calls: int) -> Row:
    """One layer's row of a step record, in ``LAYER_FIELDS`` order, from its raw sums (``RAW_LAYER_COLUMNS``)."""
    n = max(count, 1)
    mean = raw["s"] / n
    ss = raw["ss"]
    var = max(ss / n - mean * mean, 0.0) if math.isfinite(ss) and math.isfinite(mean) else math.nan
    gsq = raw["gsq"]
    named: dict[str, float | int | None] = {
        "count": count,
        "mean": finite(mean),
        "var": finite(var),
        "absmax": finite(max(abs(raw["lo"]), abs(raw["hi"]))),
        "zero_frac": 1.0 - raw["nonzero"] / n,
        "nonfinite": _count(raw["nonfinite"]),
        "units": _count(raw["units"]),
        "inactive": _count(raw["inactive"]),
        "dead": _count(raw["dead"]),
        "saturated": _count(raw["saturated"]),
        "dmean": finite(raw["dmean"]),
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
    and, across records, for how many of its layer's records each unit has been inactive (for dead units)."""

    def __init__(self, *, dead_window: int, saturation_derivative: float) -> None:
        self.dead_window = dead_window
        self.saturation_derivative = saturation_derivative
        self.acc: dict[int, LayerAcc] = {}
        self._ages: dict[int, torch.Tensor] = {}   # layer → (units,) its records in a row each unit was inactive
        self._seen: dict[int, int] = {}            # layer → records it ran in (its own dead-window clock)
        self._matrix_ids: list[int] = []                   # the layers of the last matrix, in its row order

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

    def add_matrix(self, transfer: Transfer) -> None:
        """Every called layer's raw sums as one (layers, ``RAW_LAYER_COLUMNS``) matrix for the record's
        transfer (key ``"layers"``), in a constant number of ops; ages each unit on its layer's own clock
        (``reductions.layer_matrix``: a layer that did not run this record keeps its ages)."""
        ids = sorted(i for i, a in self.acc.items() if a.unit_max is not None)
        self._matrix_ids = ids
        if not ids:
            return
        for i in ids:
            self._seen[i] = self._seen.get(i, 0) + 1
        matrix, ages = layer_matrix([self.acc[i] for i in ids], [self._ages.get(i) for i in ids],
                                    seen=[self._seen[i] for i in ids], dead_window=self.dead_window,
                                    saturation_derivative=self.saturation_derivative)
        for i, state in zip(ids, ages, strict=True):
            self._ages[i] = state
        transfer.add("layers", matrix)

    def rows(self, fetched: Mapping[Hashable, list[float]], n_layers: int) -> list[Row | None]:
        """Every header layer's row (None: not called this step) from the fetched matrix."""
        out: list[Row | None] = [None] * n_layers
        flat = fetched.get("layers", [])
        width = len(RAW_LAYER_COLUMNS)
        for k, i in enumerate(self._matrix_ids):
            acc = self.acc[i]
            raw = dict(zip(RAW_LAYER_COLUMNS, flat[k * width:(k + 1) * width], strict=True))
            out[i] = layer_row(raw, acc.count, acc.calls)
        return out

    def clear(self) -> None:
        self.acc = {}
        self._ages.clear()
        self._seen.clear()


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
