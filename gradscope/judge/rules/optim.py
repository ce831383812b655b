"""Optimizer rules: the learning rate judged from update/weight ratios ||Δw||/||w||."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    STEPS,
    Context,
    Rule,
    RuleResult,
    current_lr,
    fmt_num,
    fmt_steps,
    is_adaptive,
    nanmedian,
    optimizer_name,
    param_stat,
    pct,
    stat,
    step_range,
    weighted_layers,
)
from gradscope.judge.rules._fixes import lr_fix, sig
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run


@dataclass(frozen=True)
class LearningRateDetail:
    """What ``learning_rate`` hands its fixes: the direction, the observed and target update/weight ratios,
    the factor between them and the learning rate it gives (None when the run's learning rate is unknown)."""

    direction: str = "high"          # "low" | "high"
    ratio: float | None = None
    target: float | None = None
    factor: float = 1.0
    suggested_lr: float | None = None


def learning_rate(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Learning rate far too low or too high, judged from update/weight ratios.

    Symptom: too low — the loss creeps down, weights barely move; too high — the loss oscillates, spikes or
    diverges, units die.

    Detected when the median over layers of each weighted layer's median update/weight ratio ||Δw||/||w||
    is below ``lr_ratio_low`` or above ``lr_ratio_high`` (``lr_ratio_high_adaptive`` for Adam-like optimizers),
    and the per-step median is outside the band on at least ``persistence`` of the steps; or when the weight
    norms grew by ``lr_weight_growth`` or more over the run (median over layers of the largest
    ||W_t||/||W_0||) — blown-up weights make later ratios look small although the steps were too large. Layers a
    vanishing-gradients finding names are left out (they are slow because no gradient reaches them, not
    because of the learning rate). Steps with no update at all (a skipped or accumulating step, a zero
    learning rate) are left out. Normalization and
    embedding weights are not judged (their ratios follow other laws).

    Why it matters: the ratio says how far one step moves the weights relative to their size; ~1e-3 is the
    usual healthy value (Karpathy, CS231n). Adam-like optimizers move each element by ≈ lr whatever the
    gradient's scale, so their ratio is ≈ lr / rms(w) and runs somewhat higher; the band is wider for them.

    Fixes: a learning rate scaled by target_ratio / observed_ratio (the ratio scales linearly with the
    learning rate for SGD and, to first order, for Adam; for a rate too low the fastest layer's ratio is used,
    so no layer is pushed past the target), or a learning-rate finder / schedule.
    """
    code = Code.LEARNING_RATE
    w = weighted_layers(run)
    ur = stat(run, "param", "update_ratio")
    if not w or ur is None:
        return NotEvaluated(code, "no update/weight ratios for weighted layers in the log")
    cols = [p for _, p in w]
    r = ur[:, cols].copy()
    with np.errstate(invalid="ignore"):
        r[~(r > 0)] = np.nan          # no update this step (accumulation, skipped, lr 0) or missing
    if run.skipped.shape[0] == r.shape[0]:
        r[run.skipped] = np.nan
    # Layers starved by vanishing gradients move slowly whatever the learning rate: that is the vanishing
    # finding's to report, and counting them would suggest a learning rate that blows up the healthy layers.
    starved = {name for f in ctx.findings if f.code is Code.VANISHING_GRADIENTS and f.severity is not Severity.INFO
               for name in f.layers}
    judged = [j for j in range(len(w)) if run.layers[w[j][0]].name not in starved]
    if not judged:
        return NotEvaluated(code, "every weighted layer is starved by vanishing gradients (see that finding)")
    per_step = np.asarray(nanmedian(r[:, judged], axis=1))
    ok = np.isfinite(per_step)
    if ok.sum() < th.min_recorded_steps:
        return NotEvaluated(code, f"only {int(ok.sum())} recorded step(s) with a weight update")
    per_layer_all = np.asarray(nanmedian(r[ok], axis=0))
    per_layer = np.full(len(w), np.nan)
    per_layer[judged] = per_layer_all[judged]
    ratio = float(nanmedian(per_layer))
    adaptive = is_adaptive(run)
    high = th.lr_ratio_high_adaptive if adaptive else th.lr_ratio_high
    target = th.lr_target_ratio_adaptive if adaptive else th.lr_target_ratio
    growth = _weight_growth(run, cols)
    if ratio < th.lr_ratio_low:
        direction, bound = "low", th.lr_ratio_low
        with np.errstate(invalid="ignore"):
            out = per_step < th.lr_ratio_low
            bad_layers = [run.layers[w[j][0]].name for j in range(len(w)) if per_layer[j] < th.lr_ratio_low]
    elif ratio > high:
        direction, bound = "high", high
        with np.errstate(invalid="ignore"):
            out = per_step > high
            bad_layers = [run.layers[w[j][0]].name for j in range(len(w)) if per_layer[j] > high]
    elif growth is not None and growth >= th.lr_weight_growth:
        return [_too_high_by_growth(run, th, growth, ratio, adaptive, target)]
    else:
        return []
    frac = float(out[ok].sum() / ok.sum())
    if frac < th.persistence:
        if direction == "high" and growth is not None and growth >= th.lr_weight_growth:
            return [_too_high_by_growth(run, th, growth, ratio, adaptive, target)]
        return []
    lr = current_lr(run)
    # Too low: scale so that the fastest judged layer reaches the target, never past it (a multiplier taken
    # from the median would push layers that already move normally far above the band). Too high: scale the
    # median down to the target.
    fastest = float(np.nanmax(per_layer)) if direction == "low" else ratio
    factor = target / fastest
    suggested = lr * factor if lr is not None else None
    opt = optimizer_name(run) or "optimizer"
    steps = step_range(run.steps[ok & out])
    lr_txt = f" (lr {fmt_num(lr)}, {opt})" if lr is not None else f" ({opt})"
    msg = (f"median update/weight ratio {fmt_num(ratio)} across {len(w)} weighted layer(s) on "
           f"{fmt_steps(steps)} is too {direction}{lr_txt}: band {fmt_num(th.lr_ratio_low)}–{fmt_num(high)}, "
           f"typical ≈ {fmt_num(target)} ({pct(frac)} of steps outside)")
    evidence = {
        "median_update_ratio": ratio, "direction": direction, "threshold": bound, "target_ratio": target,
        "adaptive_optimizer": adaptive, "lr": lr, "suggested_lr": suggested, "lr_factor": factor,
        "per_layer_ratio": {run.layers[w[j][0]].name: float(per_layer[j]) for j in range(len(w))},
        "fraction_of_steps": frac, "excluded_layers": sorted(starved & {run.layers[i].name for i, _ in w}),
    }
    title = f"Learning rate too {direction}"
    detail = LearningRateDetail(direction=direction, ratio=ratio, target=target, factor=factor,
                                suggested_lr=suggested)
    return [Finding(code, Severity.WARNING, title, msg, layers=tuple(bad_layers), steps=steps, evidence=evidence,
                    confidence=min(1.0, 0.5 + 0.5 * frac), detail=detail)]


def _weight_growth(run: Run, cols: list[int]) -> float | None:
    """Median over layers of max_t ||W_t|| / ||W_0|| (layers starting at norm 0 left out)."""
    pn = stat(run, "param", "norm")
    if pn is None or pn.shape[0] < 2:
        return None
    n = pn[:, cols]
    first = np.array([n[np.isfinite(n[:, j]), j][0] if np.isfinite(n[:, j]).any() else np.nan
                      for j in range(n.shape[1])])
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.nanmax(np.where(np.isfinite(n), n, np.nan), axis=0) / first
    g = g[np.isfinite(g) & (first > 0)]
    return float(np.median(g)) if g.size else None


def _too_high_by_growth(run: Run, th: Thresholds, growth: float, ratio: float, adaptive: bool,
                        target: float) -> Finding:
    lr = current_lr(run)
    factor = 1.0 / growth   # weights that grew N× suggest steps about N× too large (a heuristic, said so)
    opt = optimizer_name(run) or "optimizer"
    lr_txt = f" (lr {fmt_num(lr)}, {opt})" if lr is not None else f" ({opt})"
    steps = step_range(run.steps)
    msg = (f"weights grew {fmt_num(growth)}× their initial norm over {fmt_steps(steps)} (median over layers; "
           f"threshold {fmt_num(th.lr_weight_growth)}×): the learning rate is too high{lr_txt}")
    evidence = {"median_update_ratio": ratio, "direction": "high", "threshold": th.lr_weight_growth,
                "weight_growth": growth, "target_ratio": target, "adaptive_optimizer": adaptive, "lr": lr,
                "suggested_lr": lr * factor if lr is not None else None, "lr_factor": factor}
    detail = LearningRateDetail(direction="high", ratio=ratio, target=target, factor=factor,
                                suggested_lr=lr * factor if lr is not None else None)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", msg, steps=steps,
                   evidence=evidence, confidence=0.6, detail=detail)


# ---------------------------------------------------------------- fixes

def learning_rate_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, LearningRateDetail) else LearningRateDetail()
    why = (f"scales the update/weight ratio from {sig(d.ratio)} to about {sig(d.target)}"
           if d.ratio is not None and d.target is not None else "brings updates into the usual band")
    fixes: list[Fix | None] = [lr_fix(run, d.factor, why, d.suggested_lr)]
    if d.direction == "low":
        fixes.append(Fix(FixKind.TRAIN_LONGER, "If the learning rate must stay, train much longer", ""))
    return fixes


RULES = (
    Rule(Code.LEARNING_RATE, learning_rate, learning_rate_fixes, "optimizer",
         needs=(LOG, STEPS, param_stat("update_ratio"))),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
