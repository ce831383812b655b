"""Pure tensor reductions: tensor in, small tensors out, never a host sync (except where noted).

Kernel choice matters more than anything else here (the table in docs/performance.md): on CPU
``torch.var_mean`` runs at ~1.4 GB/s while ``sum``/``dot`` run at 20–77 GB/s,
and ``isfinite(x).sum()`` is ~50× slower than ``x.sum()``. So variance comes from the sum and the sum of
squares, and the presence of NaN/Inf from the sum, the sum of squares and the min/max, which all propagate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_F32 = torch.float32

# Normalized derivative of each saturating activation as a function of its input z, scaled so that the
# derivative's maximum is 1 (sigmoid' ≤ 0.25, so it is multiplied by 4). Used for the saturation statistic.
_SAT_DERIVATIVE = {
    "tanh": lambda z: 1.0 - torch.tanh(z).square(),
    "sigmoid": lambda z: (lambda s: 4.0 * s * (1.0 - s))(torch.sigmoid(z)),
    "softsign": lambda z: (1.0 + z.abs()).reciprocal().square(),
    "hardtanh": lambda z: (z.abs() < 1.0).to(_F32),
    "hardsigmoid": lambda z: (z.abs() < 3.0).to(_F32),
}


def saturating(act: str | None) -> bool:
    return act in _SAT_DERIVATIVE


@dataclass
class LayerAcc:
    """Running sums of one layer's output over the calls of one step (shared modules, micro-batches).

    Every field is a 0-d or 1-d fp32/int64 tensor on the activation's device, or a Python int.
    """

    count: int = 0
    calls: int = 0
    s: torch.Tensor | None = None        # Σx
    ss: torch.Tensor | None = None       # Σx²
    lo: torch.Tensor | None = None       # min x
    hi: torch.Tensor | None = None       # max x
    nonzero: torch.Tensor | None = None  # count of x != 0
    nonfinite: torch.Tensor | None = None
    unit_max: torch.Tensor | None = None   # (U,) max over samples, for dead units
    unit_dsum: torch.Tensor | None = None  # (U,) Σ normalized derivative, for saturation
    unit_n: int = 0                        # elements per unit behind unit_dsum
    gsq: torch.Tensor | None = None        # Σ (dL/dx)², from the output-gradient hook


def _add(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a + b


def _unit_view(x: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """(U, rest) view of x with units on dim 0 (features: last dim; channels: dim 1)."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    if x.dim() == 1:
        return x.reshape(-1, 1)
    d = unit_dim % x.dim()
    return x.movedim(d, 0).reshape(x.shape[d], -1)


def _per_unit(x: torch.Tensor, unit_dim: int, op: str) -> torch.Tensor:
    """(U,) ``amax`` or ``sum`` over everything but the unit dim, reducing in place of a (U, rest) copy: for a
    channels-first activation that copy was a second activation-sized buffer per layer, at the moment the
    forward pass holds the most memory."""
    if x.dim() == 0:
        return x.reshape(1).clone()
    if x.dim() == 1:
        return x.clone()
    d = unit_dim % x.dim()
    dims = tuple(i for i in range(x.dim()) if i != d)
    if x.numel() == 0:
        return x.new_full((x.shape[d],), float("-inf") if op == "amax" else 0.0)
    return x.amax(dim=dims) if op == "amax" else x.sum(dim=dims)


def accumulate_output(acc: LayerAcc, x: torch.Tensor, *, unit_dim: int, act: str | None) -> None:
    """Add one forward call's output ``x`` to ``acc``. Runs under no_grad inside the forward hook."""
    xf = x.detach()
    if xf.dtype != _F32:
        xf = xf.to(_F32)  # fp16/bf16: statistics accumulate in fp32 (fp16 sums of squares overflow)
    flat = xf.reshape(-1)
    lo, hi = torch.aminmax(flat) if flat.numel() else (flat.new_zeros(()), flat.new_zeros(()))
    s = flat.sum()
    ss = torch.dot(flat, flat)
    acc.s = _add(acc.s, s)
    acc.ss = _add(acc.ss, ss)
    acc.lo = lo if acc.lo is None else torch.minimum(acc.lo, lo)
    acc.hi = hi if acc.hi is None else torch.maximum(acc.hi, hi)
    acc.nonzero = _add(acc.nonzero, torch.count_nonzero(flat))
    acc.nonfinite = _add(acc.nonfinite, count_nonfinite(flat, s, ss))
    acc.count += flat.numel()
    acc.calls += 1
    umax = _per_unit(xf, unit_dim, "amax")           # (U,)
    if acc.unit_max is None or acc.unit_max.shape != umax.shape:
        acc.unit_max = umax
    else:
        acc.unit_max = torch.maximum(acc.unit_max, umax)
    if act in _SAT_DERIVATIVE:
        _accumulate_derivative(acc, xf, unit_dim, act)


def accumulate_derivative(acc: LayerAcc, x: torch.Tensor, *, unit_dim: int, act: str) -> None:
    """Add the per-unit derivative sums of ``act`` at ``x`` (used when ``act`` was learned after the hook ran)."""
    if act in _SAT_DERIVATIVE:
        xf = x.detach()
        _accumulate_derivative(acc, xf if xf.dtype == _F32 else xf.to(_F32), unit_dim, act)


def _accumulate_derivative(acc: LayerAcc, xf: torch.Tensor, unit_dim: int, act: str) -> None:
    dsum = _per_unit(_SAT_DERIVATIVE[act](xf), unit_dim, "sum")      # (U,)
    n = xf.numel() // max(dsum.numel(), 1)                           # elements per unit
    if not n:
        return
    if acc.unit_dsum is None or acc.unit_dsum.shape != dsum.shape:
        acc.unit_dsum, acc.unit_n = dsum, n
    else:
        acc.unit_dsum, acc.unit_n = acc.unit_dsum + dsum, acc.unit_n + n


def count_nonfinite(flat: torch.Tensor, s: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """Number of NaN/Inf elements of ``flat`` (fp32), cheaply in the common all-finite case.

    NaN and Inf propagate into Σx and Σx², so when both are finite the count is 0. On CPU reading that
    flag is free (there is no asynchronous device), so the exact count is only computed when needed; on
    an accelerator the count is computed unconditionally to avoid a host sync inside a hook.
    """
    if flat.device.type == "cpu":
        if math.isfinite(s.item()) and math.isfinite(ss.item()):   # .item() on CPU: a read, not a sync
            return torch.zeros((), dtype=torch.int64)
        return torch.count_nonzero(flat - flat)  # finite - finite = 0, Inf - Inf = NaN, NaN stays NaN
    return torch.count_nonzero(flat - flat)


def accumulate_grad(acc: LayerAcc, g: torch.Tensor) -> None:
    """Add the squared norm of one output gradient (in fp32)."""
    gf = g.detach().reshape(-1)
    if gf.dtype != _F32:
        gf = gf.to(_F32)
    acc.gsq = _add(acc.gsq, torch.dot(gf, gf))


def finite_probe(x: torch.Tensor) -> torch.Tensor:
    """A 0-d fp32 tensor that is non-finite iff ``x`` holds a NaN/Inf (or overflows fp32 when summed)."""
    return x.detach().sum(dtype=_F32)


def input_stats(x: torch.Tensor) -> torch.Tensor:
    """[count, mean, std, min, max, feature_std_min, feature_std_max, feature_mean_absmax] as one fp64 vector.

    Features are the last dim of a 2-D/3-D input and the channel dim of a 4-D/5-D one. fp64: raw inputs
    (pixel values in 0..255, prices, counts) are exactly where fp32 moments cancel.
    """
    xd = x.detach().to(torch.float64)
    n = xd.numel()
    if n == 0:
        return torch.full((8,), float("nan"), dtype=torch.float64)
    unit_dim = 1 if xd.dim() >= 4 else -1
    units = _unit_view(xd, unit_dim) if xd.dim() >= 2 else xd.reshape(1, -1)
    fvar, fmean = torch.var_mean(units, dim=1, correction=0)
    fstd = fvar.sqrt()
    var, mean = torch.var_mean(xd, correction=0)
    lo, hi = torch.aminmax(xd.reshape(-1))
    return torch.stack([
        torch.tensor(float(n), dtype=torch.float64), mean, var.sqrt(), lo, hi,
        fstd.min(), fstd.max(), fmean.abs().max(),
    ])
