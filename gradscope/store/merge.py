"""Merging the per-rank logs of one distributed run into one ``Run``. No torch: numpy only.

Every rank of a DDP/FSDP run writes its own ``gradscope.rank{R}.jsonl`` with statistics of its own micro-batch.
``merge_ranks`` turns them into the statistics of the global batch, step by step (steps are matched by index;
a step a rank did not record is left out of that rank's share):

Activations (data parallel: each rank saw different samples)
    ``count``, ``nonfinite``: summed. ``mean``, ``var``, ``zero_frac``: exact, from the merged sums Σx, Σx²
    and zero counts reconstructed from each rank's (count, mean, var) — the parallel-variance formula
    ``var = Σ n_r (var_r + (mean_r - mean)²) / Σ n_r``. ``absmax``: max. ``dmean`` (mean derivative of a
    following sigmoid/tanh): count-weighted mean, exact because every unit has the same share of each rank's
    elements. ``grad_norm`` of a layer's output: ``sqrt(Σ ||g_r||²) / R`` — the gradient of the loss averaged
    over ranks, the loss DDP's averaged parameter gradients belong to; exact for equal per-rank batches
    with a mean loss (then it equals the single-process value on the concatenated batch).

Units (dead, inactive, saturated) are judged per unit, but a log keeps only per-rank counts, not which units.
    A unit is dead on the union only when it is dead on every rank, so the union's dead set is the
    intersection of the ranks' dead sets, whose size is at most ``min_r dead_r``: the merged ``dead`` and
    ``inactive`` are that minimum, an UPPER bound on the true count (the lower bound is
    ``max(0, Σ dead_r - (R-1)·units)``). The bound is exact when the ranks' dead sets are nested, which is
    the case that matters: all ranks hold the same weights, so a unit whose pre-activation is negative for
    the whole data distribution is dead on every rank's i.i.d. shard; only a unit that never fires on one
    rank's shard but fires on another's is over-counted, and over a ``dead_window`` of several batches per
    rank such a unit is rare. ``saturated`` cannot be bounded usefully from counts either way; it is the
    count-weighted mean of the ranks' counts (an estimate, exact when the ranks agree).

Gradients
    DDP (parameters replicated): rank 0's parameter gradient norms, weight norms, update ratios and total
    gradient norms: gradscope reads gradients after DDP's all-reduce, so every rank holds the same averaged
    gradients (another rank's values fill in where rank 0 lacks a step). FSDP2 (``header.extra["sharded"]``,
    each rank logs norms of its local shards): norms combine as ``sqrt(Σ_r norm_r²)`` per parameter and in
    total; update ratios as ``sqrt(Σ (ratio_r·||w_r||)²) / sqrt(Σ ||w_r||²)``.

Everything else: rank 0's metrics (each rank's extra names are kept), every rank's first NaN/Inf record,
scaler-skipped steps from any rank, inputs pooled like activations, ``completed`` only when every rank closed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from gradscope.store.run import Run, Series
from gradscope.store.schema import InputStats


def merge_ranks(runs: list[Run]) -> Run:
    """One ``Run`` from the runs of every rank (ordered by rank; ``runs[0]`` is rank 0)."""
    if len(runs) == 1:
        return runs[0]
    base = runs[0]
    problems = [p for r in runs for p in r.problems]
    why = _mismatch(runs)
    if why:   # logs of different models in one folder: no merge, rank 0's view with the reason
        return replace(base, ranks=len(runs), problems=[*problems, f"{base.path}: ranks not merged: {why}"])
    h = base.header
    sharded = any(bool(r.header.extra.get("sharded")) for r in runs if r.header is not None)
    steps = np.unique(np.concatenate([r.steps for r in runs]))
    pos = [np.searchsorted(steps, r.steps) for r in runs]

    def aligned(get: str, field: str) -> np.ndarray:
        """(R, S, width) of one field, NaN where a rank did not record a step."""
        width = getattr(runs[0], get)[field].shape[1]
        out = np.full((len(runs), steps.size, width), np.nan)
        for k, r in enumerate(runs):
            a = getattr(r, get)[field]
            if a.size:
                out[k, pos[k], :] = a
        return out

    layer_stats = _merge_layers({f: aligned("layer_stats", f) for f in base.layer_stats})
    param_stats = _merge_params({f: aligned("param_stats", f) for f in base.param_stats}, sharded)

    def per_step(get: str) -> np.ndarray:
        out = np.full((len(runs), steps.size), np.nan)
        for k, r in enumerate(runs):
            out[k, pos[k]] = getattr(r, get)
        return out

    grad_norm = _norm_combine(per_step("grad_norm")) if sharded else _first(per_step("grad_norm"))
    clip_norm = _norm_combine(per_step("clip_norm")) if sharded else _first(per_step("clip_norm"))
    all_steps, all_grad_norm = _merge_all_grad_norm(runs, sharded)
    skipped = np.zeros(steps.size, dtype=bool)
    lr: list[tuple[float, ...]] = [()] * steps.size
    for k in reversed(range(len(runs))):   # rank 0 last, so its learning rates win
        r = runs[k]
        if r.skipped.shape == r.steps.shape:
            skipped[pos[k]] |= r.skipped
        for i, v in zip(pos[k], r.lr, strict=False):
            if v:
                lr[i] = v
    metrics: dict[str, Series] = dict(base.metrics)
    for r in runs[1:]:
        for name, s in r.metrics.items():
            metrics.setdefault(name, s)
    nonfinite = sorted((rec for r in runs for rec in r.nonfinite), key=lambda rec: rec.step)
    acts = {la.name: la.act for r in reversed(runs) for la in r.layers if la.act}
    layers = tuple(replace(la, act=acts.get(la.name, la.act)) for la in base.layers)
    if h is not None and h.world_size > len(runs):
        problems.append(f"{base.path}: {len(runs)} of {h.world_size} ranks have a log; merged what is there")
    return replace(
        base, layers=layers, steps=steps.astype(np.int64), layer_stats=layer_stats, param_stats=param_stats,
        grad_norm=grad_norm, clip_norm=clip_norm, all_steps=all_steps, all_grad_norm=all_grad_norm, lr=lr,
        inputs=_merge_inputs(runs), skipped=skipped, metrics=metrics, nonfinite=nonfinite,
        completed=all(r.completed for r in runs), problems=problems, ranks=len(runs))


def _mismatch(runs: list[Run]) -> str | None:
    base = runs[0]
    names = [la.name for la in base.layers], [p.name for p in base.params]
    for r in runs[1:]:
        if r.header is None or base.header is None:
            return "a rank has no gradscope header"
        if ([la.name for la in r.layers], [p.name for p in r.params]) != names:
            return f"rank {r.header.rank} watched different layers or parameters than rank {base.header.rank}"
    return None


def _first(a: np.ndarray) -> np.ndarray:
    """(R, ...) -> (...): the first rank's value where it has one, else the next rank's."""
    out = a[0].copy()
    for k in range(1, a.shape[0]):
        out = np.where(np.isnan(out), a[k], out)
    return out


def _norm_combine(a: np.ndarray) -> np.ndarray:
    """sqrt(Σ_r a_r²) over the ranks present (NaN where no rank has the value)."""
    present = ~np.isnan(a)
    sq = np.where(present, a, 0.0) ** 2
    return np.where(present.any(axis=0), np.sqrt(sq.sum(axis=0)), np.nan)


def _min_present(a: np.ndarray) -> np.ndarray:
    return np.fmin.reduce(a, axis=0)


def _merge_layers(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    count = f["count"]
    present = np.isfinite(count) & (count > 0)
    w = np.where(present, count, 0.0)
    n = w.sum(axis=0)
    safe = np.where(n > 0, n, np.nan)

    def wmean(x: np.ndarray) -> np.ndarray:
        # A rank that is present but has a NaN statistic (non-finite activations) makes the merge NaN too.
        return (np.where(present, x, 0.0) * w).sum(axis=0) / safe

    mean = wmean(f["mean"])
    var = (np.where(present, f["var"] + (f["mean"] - mean) ** 2, 0.0) * w).sum(axis=0) / safe
    n_present = present.sum(axis=0)
    gsq = np.where(present, f["grad_norm"], 0.0) ** 2
    grad = np.where(n_present > 0, np.sqrt(gsq.sum(axis=0)) / np.maximum(n_present, 1), np.nan)
    grad = np.where((present & np.isnan(f["grad_norm"])).any(axis=0), np.nan, grad)

    def masked(x: np.ndarray) -> np.ndarray:
        return np.where(present, x, np.nan)

    sat_w = np.where(present & ~np.isnan(f["saturated"]), w, 0.0)
    saturated = np.round((np.where(sat_w > 0, f["saturated"], 0.0) * sat_w).sum(axis=0)
                         / np.where(sat_w.sum(axis=0) > 0, sat_w.sum(axis=0), np.nan))
    dmean_ok = present & ~np.isnan(f["dmean"])
    dw = np.where(dmean_ok, w, 0.0)
    dmean = np.where(dw.sum(axis=0) > 0, (np.where(dmean_ok, f["dmean"], 0.0) * dw).sum(axis=0)
                     / np.where(dw.sum(axis=0) > 0, dw.sum(axis=0), 1.0), np.nan)
    out = {
        "count": np.where(n > 0, n, np.nan),
        "mean": mean,
        "var": np.maximum(var, 0.0),
        "absmax": np.fmax.reduce(masked(f["absmax"]), axis=0),
        "zero_frac": wmean(f["zero_frac"]),
        "nonfinite": np.where(n > 0, np.nansum(masked(f["nonfinite"]), axis=0), np.nan),
        "units": np.fmax.reduce(masked(f["units"]), axis=0),
        "inactive": _min_present(masked(f["inactive"])),
        "dead": _min_present(masked(f["dead"])),
        "saturated": saturated,
        "dmean": dmean,
        "grad_norm": grad,
        "calls": _first(masked(f["calls"])),
    }
    for k, v in f.items():   # a field this merge does not know (a newer writer): rank 0's
        out.setdefault(k, _first(v))
    return out


def _merge_params(f: dict[str, np.ndarray], sharded: bool) -> dict[str, np.ndarray]:
    if not sharded:
        out = {k: _first(v) for k, v in f.items()}
    else:
        norm = _norm_combine(f["norm"])
        moved = _norm_combine(f["update_ratio"] * f["norm"])
        out = {k: _first(v) for k, v in f.items()}
        out["grad_norm"] = _norm_combine(f["grad_norm"])
        out["norm"] = norm
        out["update_ratio"] = np.where(norm > 0, moved / np.where(norm > 0, norm, 1.0), np.nan)
    if "grad_nonfinite" in f:
        out["grad_nonfinite"] = np.fmax.reduce(f["grad_nonfinite"], axis=0)
    return out


def _merge_all_grad_norm(runs: list[Run], sharded: bool) -> tuple[np.ndarray, np.ndarray]:
    if not sharded:
        seen: dict[int, float] = {}
        for r in reversed(runs):   # rank 0 last: its values win
            seen.update(zip(r.all_steps.tolist(), r.all_grad_norm.tolist(), strict=True))
        keys = sorted(seen)
        return np.array(keys, dtype=np.int64), np.array([seen[s] for s in keys], dtype=float)
    # Sharded: a total needs every shard; keep the steps every rank reported.
    common = set(runs[0].all_steps.tolist())
    for r in runs[1:]:
        common &= set(r.all_steps.tolist())
    keys = sorted(common)
    sq = np.zeros(len(keys))
    for r in runs:
        d = dict(zip(r.all_steps.tolist(), r.all_grad_norm.tolist(), strict=True))
        sq += np.array([d[s] for s in keys], dtype=float) ** 2
    return np.array(keys, dtype=np.int64), np.sqrt(sq)


def _merge_inputs(runs: list[Run]) -> list[tuple[int, InputStats]]:
    by_step: dict[int, list[InputStats]] = {}
    for r in runs:
        for s, inp in r.inputs:
            by_step.setdefault(s, []).append(inp)
    out = []
    for s in sorted(by_step):
        xs = [x for x in by_step[s] if x.count > 0 and x.mean is not None and x.std is not None]
        if len(xs) < 2:
            out.append((s, by_step[s][0]))
            continue
        n = sum(x.count for x in xs)
        mean = sum(x.count * x.mean for x in xs if x.mean is not None) / n
        var = sum(x.count * (x.std**2 + (x.mean - mean) ** 2)
                  for x in xs if x.std is not None and x.mean is not None) / n
        lows = [x.min for x in xs if x.min is not None]
        highs = [x.max for x in xs if x.max is not None]
        out.append((s, replace(xs[0], count=n, mean=mean, std=float(np.sqrt(max(var, 0.0))),
                               min=min(lows) if lows else None, max=max(highs) if highs else None)))
    return out
