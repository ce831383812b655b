"""Pure tensor reductions: tensor in, small tensors out, never a host sync.

Kernel choice matters more than anything else here (the table in docs/performance.md): on CPU
``torch.var_mean`` runs at ~1.4 GB/s while ``sum``/norms run at 20–77 GB/s,
and ``isfinite(x).sum()`` is ~50× slower than ``x.sum()``. So variance comes from the sum and the sum of
squares, and the presence of NaN/Inf from the sum, the sum of squares and the min/max, which all propagate it.

On a GPU the number of kernels matters more than their size (a recorded step is launch-bound), so each
statistic is one reduction over the activation in its own dtype, accumulating in fp32 (``sum(dtype=...)``,
``vector_norm(dtype=...)``): never an fp32 copy of a bf16/fp16 activation. Every tensor created here takes
its device from its input (``device=``, ``new_*`` or ``*_like``), so a CUDA model never meets a CPU tensor
(tests/measure/test_device.py checks it on CPU with a different default device), and no op here is one that
has no deterministic CUDA kernel (``NONDETERMINISTIC_CUDA_OPS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

_F32 = torch.float32

NONDETERMINISTIC_CUDA_OPS: frozenset[str] = frozenset({
    "histc", "bincount_weighted", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
    "index_add", "index_add_", "index_copy", "index_copy_", "index_put_accumulate", "put_", "cumsum_float",
    "median", "nanmedian", "kthvalue", "embedding_bag", "_embedding_bag",
    "_embedding_bag_backward", "nll_loss", "nll_loss2d", "grid_sampler_2d_backward",
})
"""ATen ops (overload packet names) that ``torch.use_deterministic_algorithms(True)`` makes raise on CUDA, or
that are nondeterministic there (the list in that function's docstring, torch 2.13, restricted to the ops a
reduction could reach for). gradscope's hooks run inside the user's forward and backward, so one of these
would fail a deterministic user run (``torch.histc`` did: the TensorBoard histograms now bin with
``bincount`` without weights). Three entries are conditions, not op names: ``bincount_weighted`` (``bincount``
with ``weights``), ``index_put_accumulate`` (``index_put_(..., accumulate=True)``) and ``cumsum_float``
(``cumsum`` of a floating-point tensor; an integer ``cumsum``, which ``layer_matrix`` uses, is
deterministic). tests/measure/test_deterministic.py records every op of a watched training and checks
none of them is here."""

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
    """Whether ``act`` has a saturation statistic (a bounded derivative that vanishes for large inputs)."""
    return act in _SAT_DERIVATIVE


@dataclass
class LayerAcc:
    """Running sums of one layer's output over the calls of one step (shared modules, micro-batches).

    Every tensor field is on the activation's device: sums (``s``, ``ss``, ``nonfinite``, ``unit_dsum``,
    ``gsq``) are fp32, ``nonzero`` int64, and the extremes (``lo``, ``hi``, ``unit_max``) stay in the
    activation's own dtype (exact there; converting them would be one more kernel per layer). Counts of
    elements and calls are Python ints.
    """

    count: int = 0
    calls: int = 0
    s: torch.Tensor | None = None        # Σx
    ss: torch.Tensor | None = None       # Σx²
    lo: torch.Tensor | None = None       # min x
    hi: torch.Tensor | None = None       # max x
    nonzero: torch.Tensor | None = None  # count of x != 0
    nonfinite: torch.Tensor | None = None  # NaN/Inf elements (estimated: NONFINITE_SAMPLE)
    unit_max: torch.Tensor | None = None   # (U,) max over samples, for dead units
    unit_dsum: torch.Tensor | None = None  # (U,) Σ normalized derivative, for saturation
    unit_n: int = 0                        # elements per unit behind unit_dsum
    gsq: torch.Tensor | None = None        # Σ (dL/dx)², from the output-gradient hook


def _add(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, or ``b`` for the first call of the step."""
    return b if a is None else a + b


NONFINITE_SAMPLE = 4096
"""NaN/Inf elements are counted on a fixed strided sample of at most 4096 elements of each output and scaled
to the whole output (exact for outputs up to that size). An exact count needs an elementwise pass that
allocates a buffer the size of the activation; the count only has to say "some" or "many", and whether the
output held any NaN/Inf at all is exact anyway: the full Σx and Σx² (and min/max) propagate it, which makes
the recorded mean/variance non-finite."""

DERIVATIVE_SAMPLE = 1 << 19
"""The saturation derivative (a per-unit mean of act'(x)) is taken over all of an output up to 524288
elements, and over evenly spaced rows (samples, positions) of larger ones, every unit in each: the mean of
≥ 512K/U values per unit estimates a per-unit mean derivative in [0, 1] to well under the 0.1 threshold it is
compared with, while the fp32 temporaries it needs (tanh, its square, ...) stay under 2 MiB each however large
the activation (they were several fp32 copies of it, at the moment the forward pass holds the most memory)."""

_DIMS_CACHE: dict[tuple[int, int], tuple[int, ...]] = {}


def _other_dims(ndim: int, unit_dim: int) -> tuple[int, ...]:
    """Every dim of an ``ndim``-D tensor but the unit dim (cached: this runs per layer per recorded call)."""
    key = (ndim, unit_dim)
    dims = _DIMS_CACHE.get(key)
    if dims is None:
        d = unit_dim % ndim
        dims = _DIMS_CACHE[key] = tuple(i for i in range(ndim) if i != d)
    return dims


def _unit_view(x: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """(U, rest) view of x with units on dim 0 (features: last dim; channels: dim 1)."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    if x.dim() == 1:
        return x.reshape(-1, 1)
    d = unit_dim % x.dim()
    return x.movedim(d, 0).reshape(x.shape[d], -1)


def _per_unit(x: torch.Tensor, unit_dim: int, op: str) -> torch.Tensor:
    """(U,) ``amax`` or fp32 ``sum`` over everything but the unit dim, reducing in place of a (U, rest) copy:
    for a channels-first activation that copy was a second activation-sized buffer per layer, at the moment
    the forward pass holds the most memory. ``amax`` runs in the tensor's own dtype (a max is exact in
    bf16/fp16: no fp32 copy); ``sum`` accumulates in fp32."""
    if x.dim() == 0:
        x = x.reshape(1)
    if x.dim() == 1:
        return x.clone() if op == "amax" else x.to(_F32, copy=True)
    d = unit_dim % x.dim()
    if x.numel() == 0:
        return x.new_full((x.shape[d],), float("-inf") if op == "amax" else 0.0,
                          dtype=x.dtype if op == "amax" else _F32)
    dims = _other_dims(x.dim(), unit_dim)
    return x.amax(dim=dims) if op == "amax" else x.sum(dim=dims, dtype=_F32)


def _strided_sample(x: torch.Tensor, limit: int) -> tuple[torch.Tensor, float]:
    """A 1-D view of at most ``limit`` elements of ``x`` spread evenly through its memory, and the factor
    (elements ÷ sampled) that scales a count on the sample to the whole tensor. No copy for a dense tensor
    (contiguous, channels-last, any permutation of a contiguous layout): it is read in memory order with one
    ``as_strided``. A non-dense view (a slice) falls back to its leading rows, a copy of at most ``limit``
    elements (or one row)."""
    n = x.numel()
    if n <= limit:
        return x.reshape(-1), 1.0
    if _dense(x):
        step = -(-n // limit)   # ceil: at most ``limit`` picks
        inner = min((sz for st, sz in zip(x.stride(), x.shape, strict=True) if st == 1 and sz > 1), default=1)
        while math.gcd(step, inner) != 1:
            step += 1   # a step sharing a factor with the innermost dim would skip features/channels
        k = -(-n // step)
        return x.as_strided((k,), (step,), x.storage_offset()), n / k
    rows = max(limit // max(n // x.shape[0], 1), 1)
    part = x[:rows].reshape(-1)[:limit]
    return part, n / part.numel()


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` covers exactly the storage span it addresses with no gaps (some permutation of its dims is
    contiguous), so that memory positions offset .. offset+numel-1 are exactly its elements."""
    dims = sorted((st, sz) for st, sz in zip(x.stride(), x.shape, strict=True) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def accumulate_output(acc: LayerAcc, x: torch.Tensor, *, unit_dim: int, act: str | None) -> None:
    """Add one forward call's output ``x`` to ``acc``. Runs under no_grad inside the forward hook (so no
    ``detach``: nothing here is recorded by autograd).

    A handful of reductions over ``x`` in its own dtype, each accumulating in fp32 where it sums, and none
    materializing an fp32 copy of a bf16/fp16 activation (the ``.to(float32)`` copies were a third of a
    recorded step's device time on a bf16 GPU model): Σx (``sum(dtype=float32)``), Σx² (``dot`` for a
    contiguous fp32 output, else an fp32 ``vector_norm`` squared), min/max (``aminmax``, exact in any dtype),
    the non-zero count, the per-unit max (exact over every sample: dead units need it) and the NaN/Inf count
    on a bounded sample (``NONFINITE_SAMPLE``). All are exact except that count and, for outputs over
    ``DERIVATIVE_SAMPLE`` elements, the saturation derivative.
    """
    n = x.numel()
    if n == 0:
        lo = hi = s = ss = nonzero = nonfinite = x.new_zeros((), dtype=_F32)
    else:
        s = x.sum(dtype=_F32)
        ss = _sum_of_squares(x)
        lo, hi = torch.aminmax(x)
        nonzero = torch.count_nonzero(x)
        sample, scale = _strided_sample(x, NONFINITE_SAMPLE)
        # finite - finite = 0, Inf - Inf = NaN, NaN stays NaN: non-zero exactly at the NaN/Inf elements.
        nonfinite = torch.count_nonzero(sample - sample)
        if scale != 1.0:
            nonfinite = nonfinite * scale
    acc.s = _add(acc.s, s)
    acc.ss = _add(acc.ss, ss)
    acc.lo = lo if acc.lo is None else torch.minimum(acc.lo, lo)
    acc.hi = hi if acc.hi is None else torch.maximum(acc.hi, hi)
    acc.nonzero = _add(acc.nonzero, nonzero)
    acc.nonfinite = _add(acc.nonfinite, nonfinite)
    acc.count += n
    acc.calls += 1
    umax = _per_unit(x, unit_dim, "amax")           # (U,), in x's dtype
    if acc.unit_max is None or acc.unit_max.shape != umax.shape:
        acc.unit_max = umax
    else:
        acc.unit_max = torch.maximum(acc.unit_max, umax)
    if act in _SAT_DERIVATIVE:
        _accumulate_derivative(acc, x, unit_dim, act)


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """Σx² in fp32 (fp64 for an fp64 tensor: a norm never narrows) as one kernel: ``dot`` of a contiguous
    fp32/fp64 tensor with itself (a view, no copy), else an fp32-accumulating ``vector_norm`` (no fp32 copy of a
    bf16/fp16 tensor on a GPU), squared. The result is fp32 either way, like every other raw statistic."""
    if x.dtype in (_F32, torch.float64) and x.is_contiguous():
        flat = x.view(-1)
        return torch.dot(flat, flat).to(_F32)
    return torch.linalg.vector_norm(x, dtype=torch.float64 if x.dtype == torch.float64 else _F32).square().to(_F32)


def accumulate_derivative(acc: LayerAcc, x: torch.Tensor, *, unit_dim: int, act: str) -> None:
    """Add the per-unit derivative sums of ``act`` at ``x`` (used when ``act`` was learned after the hook ran)."""
    if act in _SAT_DERIVATIVE:
        _accumulate_derivative(acc, x.detach(), unit_dim, act)


def _row_sample(x: torch.Tensor, unit_dim: int, limit: int) -> torch.Tensor:
    """``x`` itself when it has at most ``limit`` elements, else a view that keeps every unit and about
    ``limit`` elements: evenly spaced rows (indices along the leading non-unit dim), or, when one row alone
    is over the limit (a huge feature map or sequence), the first row with evenly spaced positions along its
    innermost non-unit dim."""
    n = x.numel()
    if n <= limit or x.dim() < 2:
        return x
    d = unit_dim % x.dim()
    cut = 0 if d != 0 else 1
    rows = x.shape[cut]
    per_row = n // max(rows, 1)
    if per_row <= limit:
        return x[(slice(None),) * cut + (slice(None, None, -(-rows * per_row // limit)),)]
    # One row is already over the budget (batch 1, a huge feature map): thin out a trailing dim as well.
    part = x.narrow(cut, 0, 1)
    last = part.dim() - 1 if d != part.dim() - 1 else part.dim() - 2
    step = -(-part.numel() // limit)
    return part[(slice(None),) * last + (slice(None, None, step),)]


def _accumulate_derivative(acc: LayerAcc, x: torch.Tensor, unit_dim: int, act: str) -> None:
    part = _row_sample(x, unit_dim, DERIVATIVE_SAMPLE)
    dsum = _per_unit(_SAT_DERIVATIVE[act](part.to(_F32)), unit_dim, "sum")      # (U,), bounded temporaries
    n = part.numel() // max(dsum.numel(), 1)                                    # elements per unit
    if not n:
        return
    if acc.unit_dsum is None or acc.unit_dsum.shape != dsum.shape:
        acc.unit_dsum, acc.unit_n = dsum, n
    else:
        acc.unit_dsum, acc.unit_n = acc.unit_dsum + dsum, acc.unit_n + n


def accumulate_grad(acc: LayerAcc, g: torch.Tensor) -> None:
    """Add the squared norm of one output gradient, accumulated in fp32 without an fp32 copy of it. Runs under
    no_grad in the gradient hook."""
    acc.gsq = _add(acc.gsq, _sum_of_squares(g))


def finite_probe(x: torch.Tensor) -> torch.Tensor:
    """A 0-d fp32 tensor that is non-finite iff ``x`` holds a NaN/Inf (or overflows fp32 when summed)."""
    return x.detach().sum(dtype=_F32)


INPUT_SAMPLE = 1 << 16
"""Input moments (mean, std, per-feature std and mean) are taken in fp64 over all of an input up to 65536
elements and over evenly spaced rows (every feature in each) of a larger one: an fp64 copy of a whole large
batch (8 bytes per element, at the start of the forward pass) costs memory and time, while 65536 values pin
a mean/std to ~0.5% and the input rules compare scales in decades. Min and max stay exact (``aminmax`` on
the whole input, in its own dtype)."""


def output_simplex(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[min, least row sum, greatest row sum] of the model output ``x`` along ``dim`` (its class dimension) as
    one fp64 vector on ``x``'s device: three small reductions and one stack, no host sync. All entries ≥ 0 and
    every row summing to 1 means the model outputs probabilities (a final softmax). Row sums in fp64, so a
    half-precision output is not judged by the rounding of its own sum."""
    xd = x.detach()
    lo, hi = torch.aminmax(xd.sum(dim=dim, dtype=torch.float64))
    return torch.stack([xd.amin().double(), lo, hi])


def input_stats(x: torch.Tensor) -> torch.Tensor:
    """[count, mean, std, min, max, feature_std_min, feature_std_max, feature_mean_absmax] as one fp64 vector.

    Features are the last dim of a 2-D/3-D input and the channel dim of a 4-D/5-D one. fp64: raw inputs
    (pixel values in 0..255, prices, counts) are exactly where fp32 moments cancel. Moments come from at
    most ``INPUT_SAMPLE`` elements (exact below that); count, min and max from the whole input.
    """
    xd = x.detach()
    n = xd.numel()
    if n == 0:
        return torch.full((8,), float("nan"), dtype=torch.float64, device=xd.device)
    unit_dim = 1 if xd.dim() >= 4 else -1
    lo, hi = torch.aminmax(xd)
    part = _row_sample(xd, unit_dim, INPUT_SAMPLE).to(torch.float64)
    units = _unit_view(part, unit_dim) if part.dim() >= 2 else part.reshape(1, -1)
    fvar, fmean = torch.var_mean(units, dim=1, correction=0)
    fstd = fvar.sqrt()
    var, mean = torch.var_mean(part, correction=0)
    return torch.stack([
        torch.full((), float(n), dtype=torch.float64, device=xd.device), mean, var.sqrt(), lo.double(),
        hi.double(), fstd.min(), fstd.max(), fmean.abs().max(),
    ])


RAW_LAYER_COLUMNS = ("s", "ss", "lo", "hi", "nonzero", "nonfinite", "units", "inactive", "dead", "saturated",
                     "dmean", "gsq")
"""The columns of ``layer_matrix``: the raw per-layer sums a record row is derived from (NaN: not measured)."""

_LAYOUTS: dict[tuple[torch.device, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
_PICKS: dict[tuple[torch.device, tuple[Any, ...]], torch.Tensor] = {}
_LAYOUT_CACHE_SIZE = 64
"""Index tensors per (device, unit counts) layout. A run has one or two layouts (every layer called, or a
subset on some steps), so 64 bounds the cache across many watches without ever evicting a live one."""


def _device_index(values: list[int], device: torch.device) -> torch.Tensor:
    """An int64 index tensor on ``device`` from host ints, without a host sync: staged through pinned memory
    and copied asynchronously on CUDA (a plain host-to-device copy of pageable memory waits for the stream)."""
    t = torch.tensor(values, dtype=torch.int64, device=torch.device("cpu"))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _cached_index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``_device_index`` of ``values``, created once per (device, values) layout."""
    key = (device, ("pick", *values))
    hit = _PICKS.get(key)
    if hit is None:
        if len(_PICKS) >= _LAYOUT_CACHE_SIZE:
            _PICKS.pop(next(iter(_PICKS)))
        hit = _PICKS[key] = _device_index(list(values), device)
    return hit


def _segments(sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(bounds, units) for segments of these sizes laid end to end: ``bounds`` (2, L) holds each segment's
    [end, start] positions in a cumulative sum with a leading zero, ``units`` (L,) fp32 the sizes. Cached."""
    key = (device, sizes)
    hit = _LAYOUTS.get(key)
    if hit is None:
        ends, starts, pos = [], [], 0
        for n in sizes:
            starts.append(pos)
            pos += n
            ends.append(pos)
        bounds = _device_index(ends + starts, device).view(2, len(sizes))
        units = _device_index(list(sizes), device).to(_F32)
        if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        hit = _LAYOUTS[key] = (bounds, units)
    return hit


def _segment_counts(flags: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Per-segment counts of the True entries of ``flags`` (Utot, k) bool: (L, k) int64. An integer cumulative
    sum (deterministic on CUDA, unlike a float one or ``index_add``) read at the segment bounds."""
    padded = torch.cat([flags.new_zeros((1, flags.shape[1])), flags])
    csum = padded.cumsum(0)                                   # (Utot + 1, k) int64
    at = csum.index_select(0, bounds.reshape(-1)).view(2, bounds.shape[1], flags.shape[1])
    return at[0] - at[1]


def _held(t: torch.Tensor | None) -> torch.Tensor:
    """``t``, which the caller guarantees is set (an accumulator with at least one output)."""
    if t is None:
        raise ValueError("layer_matrix needs accumulators that hold at least one output")
    return t


def layer_matrix(accs: list[LayerAcc], ages: list[torch.Tensor | None], *, seen: list[int], dead_window: int,
                 saturation_derivative: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every layer's raw record row (``RAW_LAYER_COLUMNS``) as one (L, 12) fp32 matrix, in a constant number
    of ops whatever the number of layers, and each layer's updated per-unit age.

    The per-layer version of this (a stack, a dozen small reductions and casts per layer) was most of the
    ~40 ops a recorded step added per layer: on a GPU that is a kernel launch each. Here the per-unit
    vectors of all layers are concatenated once and counted per layer with one integer cumulative sum read
    at cached segment bounds; the per-layer scalars go into one ``stack``.

    Dead units are counted on the layer's own clock: ``ages[i]`` (None at the layer's first record) is, per
    unit, how many of the layer's records in a row it has not been positive, and ``seen[i]`` how many records
    the layer has been called in, this one included. A unit is dead once its age reaches ``dead_window``;
    ``dead`` is NaN until the layer has been seen that many times. A record the layer did not run in (a
    mixture-of-experts expert that got no token, a branch taken on some steps) leaves its ages alone: a unit
    that had no input had no chance to fire, and counting the step against it made a starved expert's units
    look dead. Requires every ``acc`` to hold at least one output (``unit_max`` set).
    """
    unit_maxes = [_held(a.unit_max) for a in accs]
    dev = unit_maxes[0].device
    nan = torch.full((), math.nan, dtype=_F32, device=dev)
    sizes = tuple(u.numel() for u in unit_maxes)
    bounds, units = _segments(sizes, dev)
    scalars = torch.stack([_held(v) for a in accs for v in (a.s, a.ss, a.lo, a.hi, a.nonzero, a.nonfinite,
                                                             nan if a.gsq is None else a.gsq)])
    scalars = scalars.to(_F32).view(len(accs), 7)   # one promotion (counts are int64, bf16 extremes)
    umax = torch.cat(unit_maxes)
    active = umax > 0
    prev = [p if p is not None and p.numel() == n else torch.zeros((n,), dtype=torch.int64, device=dev)
            for p, n in zip(ages, sizes, strict=True)]
    age = torch.where(active, 0, torch.cat(prev) + 1)
    flags = [~active]
    enough = [k >= dead_window for k in seen]
    if any(enough):
        flags.append(age >= dead_window)
    counts = _segment_counts(torch.stack(flags, 1), bounds).to(_F32)   # (L, 1 or 2)
    if all(enough):
        dead = counts[:, 1]
    elif any(enough):   # a layer first called late: NaN until its own window fills
        pick = _cached_index(tuple(k if e else len(accs) for k, e in enumerate(enough)), dev)
        dead = torch.cat([counts[:, 1], nan.reshape(1)]).index_select(0, pick)
    else:
        dead = nan.expand(len(accs))
    sat_ids = [i for i, a in enumerate(accs) if a.unit_dsum is not None and a.unit_n]
    if sat_ids:
        per_unit = torch._foreach_div([_held(accs[i].unit_dsum) for i in sat_ids],
                                      [float(accs[i].unit_n) for i in sat_ids])
        sub_bounds, sub_units = _segments(tuple(sizes[i] for i in sat_ids), dev)
        sat = _segment_counts((torch.cat(per_unit) < saturation_derivative).unsqueeze(1), sub_bounds)
        dmean = torch.stack(torch._foreach_norm(per_unit, 1)) / sub_units   # derivatives are ≥ 0: Σ|d| = Σd
        sat_col = torch.cat([sat[:, 0].to(_F32), nan.reshape(1)])
        dmean_col = torch.cat([dmean, nan.reshape(1)])
        slot = {i: k for k, i in enumerate(sat_ids)}
        pick = _cached_index(tuple(slot.get(i, len(sat_ids)) for i in range(len(accs))), dev)
        saturated, dmeans = sat_col.index_select(0, pick), dmean_col.index_select(0, pick)
    else:
        saturated = dmeans = nan.expand(len(accs))
    matrix = torch.cat([scalars[:, :6], units.unsqueeze(1), counts[:, :1], dead.unsqueeze(1),
                        saturated.unsqueeze(1), dmeans.unsqueeze(1), scalars[:, 6:]], dim=1)
    return matrix, list(age.split(sizes))
