"""Optimizer rules: the learning rate judged from update/weight ratios ||Δw||/||w|| and from the per-step
learning rate the watch records (a spike in the schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from gradscope.judge.confidence import agree, confidence, mean, ratio_margin, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    STEPS,
    Context,
    Rule,
    RuleResult,
    current_lr,
    early_count,
    falling_trend,
    finite_series,
    fmt_num,
    fmt_steps,
    is_adaptive,
    nanmedian,
    optimizer_name,
    param_stat,
    pct,
    stat,
    step_range,
    tail_slice,
    weighted_layers,
)
from gradscope.judge.rules._fixes import lr_fix, sig, suggest_max_norm
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
    spike: LrSpike | None = None     # the schedule spiked: the fix edits the schedule, not the base rate
    step_up: LrStepUp | None = None  # the schedule stepped up for good: the fix edits the schedule
    init_step: LrInitStep | None = None  # Adam-like steps large against the weights' initial scale
    peak_lr: float | None = None     # the rate the ratios were scaled to (the schedule's peak), when it varied
    clip_crush: float | None = None  # too low because clipping keeps only this share of every step's gradient


@dataclass(frozen=True)
class LrSpike:
    """A spike in the recorded per-step learning rate (first param group): the recorded steps ``first``–``last``
    ran at up to ``peak``, ``factor`` × the ``base`` rate the schedule uses elsewhere (median of the other
    recorded steps); ``before`` is the last recorded step before it and ``after`` the first one after it, both
    back at the base. ``count`` spikes of that kind in the run (the first is described)."""

    first: int
    last: int
    peak: float
    base: float
    factor: float
    before: int
    after: int
    count: int = 1


def find_lr_spike(run: Run, th: Thresholds) -> LrSpike | None:
    """The first spike in the recorded learning rate of the first param group, or None.

    A spike is a run of consecutive recorded steps whose rate is at least ``lr_spike_factor`` × the median rate
    of the whole run, with a recorded step below that on both sides (the rate came back), covering at most
    ``lr_spike_max_fraction`` of the recorded steps. A warm-up (nothing lower before it), a step decay (only ever
    down), a one-cycle or cosine schedule (their peak is a few times their median) and warm restarts (the base
    itself) are not spikes."""
    lr = np.array([r[0] if r and r[0] is not None else np.nan for r in run.lr], dtype=float)
    if lr.size != run.steps.size or lr.size < th.min_recorded_steps:
        return None
    ok = np.isfinite(lr) & (lr > 0)
    if ok.sum() < th.min_recorded_steps:
        return None
    med = float(np.median(lr[ok]))
    with np.errstate(invalid="ignore"):
        high = ok & (lr >= th.lr_spike_factor * med)
    spikes: list[tuple[int, int]] = []
    i = 0
    while i < lr.size:
        if not high[i]:
            i += 1
            continue
        j = i
        while j + 1 < lr.size and high[j + 1]:
            j += 1
        if i > 0 and j + 1 < lr.size and ok[i - 1] and ok[j + 1] and (j - i + 1) <= th.lr_spike_max_fraction * lr.size:
            spikes.append((i, j))
        i = j + 1
    if not spikes:
        return None
    i, j = spikes[0]
    inside = np.zeros(lr.size, dtype=bool)
    for a, b in spikes:
        inside[a:b + 1] = True
    base = float(np.median(lr[ok & ~inside]))
    peak = float(np.max(lr[i:j + 1]))
    return LrSpike(first=int(run.steps[i]), last=int(run.steps[j]), peak=peak, base=base, factor=peak / base,
                   before=int(run.steps[i - 1]), after=int(run.steps[j + 1]), count=len(spikes))


@dataclass(frozen=True)
class LrStepUp:
    """A lasting step up in the recorded learning rate (first param group): from recorded step ``step`` on, the
    rate is ``new`` (median of the stretch), ``factor`` × the highest rate ``old`` of the recorded steps before it
    (the last of them ``before``), and it stays up to ``last``. ``harm`` is what the stretch after it shows:
    ``"loss"`` → {metric: (level before, level at the end)}, ``"growth"`` → the weights' growth over the stretch,
    ``"ratio"`` → the update/weight-ratio finding on the stretch judged on its own."""

    step: int
    before: int
    old: float
    new: float
    factor: float
    last: int
    harm: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class LrInitStep:
    """Adam-like steps large against the weights' initial scale: the peak recorded rate ``peak`` (first reached on
    recorded step ``peak_step``) is ``scale`` × the initial rms of the weights (median over the judged weighted
    layers of lr / init std), and the run shows the ``damage`` (finding codes) such steps do; ``strength`` is
    how strongly (the damage findings' strengths above the confidence floor, agreeing)."""

    peak: float
    peak_step: int
    scale: float
    damage: tuple[Code, ...]
    strength: float = 0.0


def _recorded_lr(run: Run) -> np.ndarray | None:
    """The recorded per-step learning rate of the first param group, aligned with ``run.steps`` (NaN where a step
    has none), or None when the log records none."""
    lr = np.array([r[0] if r and r[0] is not None else np.nan for r in run.lr], dtype=float)
    if lr.size != run.steps.size or not np.isfinite(lr).any():
        return None
    return lr


def find_lr_step_up(run: Run, th: Thresholds) -> LrStepUp | None:
    """The first lasting step up in the recorded learning rate of the first param group, or None.

    A step up is a recorded step whose rate is at least ``lr_spike_factor`` × the highest rate of every recorded
    step before it (a level the run never came near: not a warm restart or a cycle, which go back to a rate
    already used), after at least ``min_recorded_steps`` recorded steps at the old level, reached within a gap
    of optimizer steps no longer than the run had trained before it (a step, not a ramp: a warm-up sampled
    sparsely rises between two recorded steps far apart), and lasting: the rate does not come back below that
    level before the end, or stays there longer than ``lr_spike_max_fraction`` of the recorded steps (shorter,
    it is a spike: ``find_lr_spike``). A step decay, a warm-up, a one-cycle policy and cosine restarts are not
    step ups; a constant warm-up (a low rate for a while, then the base: He et al. 2016) is, and
    ``learning_rate`` names it only when the stretch after it shows harm."""
    lr = _recorded_lr(run)
    if lr is None:
        return None
    idx = np.flatnonzero(np.isfinite(lr) & (lr > 0))
    steps = run.steps
    for n in range(th.min_recorded_steps, idx.size):
        i = idx[n]
        old = float(np.max(lr[idx[:n]]))
        level = th.lr_spike_factor * old
        # A scheduler that multiplies by exactly the factor lands on the level up to rounding.
        if not (lr[i] >= level or np.isclose(lr[i], level)):
            continue
        if steps[i] - steps[idx[n - 1]] > steps[idx[n - 1]] - steps[idx[0]]:
            continue
        later = lr[idx[n:]]
        high = (later >= level) | np.isclose(later, level)
        k = int(np.argmin(high)) if not high.all() else high.size
        if k < high.size and k <= th.lr_spike_max_fraction * idx.size:
            continue
        new = float(np.median(later[:k]))
        return LrStepUp(step=int(steps[i]), before=int(steps[idx[n - 1]]), old=old, new=new, factor=new / old,
                        last=int(steps[idx[n + k - 1]]))
    return None


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
    embedding weights are not judged (their ratios follow other laws). Inside the band, a rate is also too
    low when the ratio is below ``lr_slow_ratio_fraction`` of the optimizer family's typical value
    (``lr_target_ratio``, or ``lr_target_ratio_adaptive``) and the training loss shows slow, steady
    progress: a one-sided Mann–Kendall test finds a falling trend (p below ``lr_trend_p``, at least
    ``lr_trend_min_points`` values), the Theil–Sen slope's ``lr_trend_confidence`` interval is below zero,
    and the loss fell by less than ``lr_slow_max_drop`` over the run — a model that keeps improving at this
    pace is held back by its step size, not its capacity (a plateau or real progress does not count).

    When the recorded learning rate varies (a warm-up, a decay), each step's ratio is first scaled to the
    schedule's peak (× lr_peak / lr_t: the ratio is proportional to the rate), so the judgement is of the rate
    the user sets, and a cosine tail near 0 neither hides a peak that was too high nor makes it look too low.

    For Adam-like optimizers, also too high when the peak rate is at least ``lr_init_step_adaptive`` × the
    weights' initial scale (median over judged layers of lr / initial std, from the header: Adam's first steps
    move each weight by about lr, so this is their update/weight ratio before the weights grow and the ratio
    falls) and the run shows the damage such steps do: it underfits (``underfitting`` warns), or a divergence,
    exploding-gradients or dead-ReLU finding is loud. Judged on the whole run only.

    A spike in the schedule: the per-step learning rate the watch records (``optimizer=``) is at least
    ``lr_spike_factor`` × its median on a few consecutive recorded steps (at most ``lr_spike_max_fraction`` of
    them) and back below that before and after (``find_lr_spike``). The base rate is then judged on the
    recorded steps before the spike only (the weights the spike threw around say nothing about it); when it is
    fine there, the finding names the spike — its steps, its peak and its factor over the base — and its fix
    edits the schedule, not the base rate.

    A lasting step up in the schedule (``find_lr_step_up``: the rate rises ``lr_spike_factor``× above every rate
    used before, abruptly, and stays there — a MultiStepLR with gamma=10 where 0.1 was meant): the base rate is
    judged on the steps before it (a finding there leads, the step up on top), then the stretch after it on its
    own; the finding names the step, the old and the new rate, when that stretch shows harm — the training or
    validation loss ends above its level before the step, the weights grew ``lr_weight_growth``× over it, or its
    ratios are out of the band. A constant warm-up that ends (a low rate, then the base) shows none and is quiet.

    Why it matters: the ratio says how far one step moves the weights relative to their size; ~1e-3 is the
    usual healthy value (Karpathy, CS231n). Adam-like optimizers move each element by ≈ lr whatever the
    gradient's scale, so their ratio is ≈ lr / rms(w) and runs somewhat higher; the band is wider for them.

    Confidence: the Wilson lower bound (``confidence_support_level``) of the fraction of judged steps outside the
    band, averaged with how far the median ratio is past the band's edge (``ratio_margin``); for weight growth
    its margin over ``lr_weight_growth``; for slow progress the trend test's 1 − p averaged with the ratio's
    margin below ``lr_slow_ratio_fraction`` × typical; for a spike its factor's margin over ``lr_spike_factor``;
    for a step up that margin averaged with the harm (the loss's end over its level before, the growth's margin,
    agreeing); for steps large against the initial scale the margin over ``lr_init_step_adaptive`` averaged with
    the damage findings' strengths (agreeing) — each mapped through ``confidence`` from ``confidence_floor``.

    Fixes: a learning rate scaled by target_ratio / observed_ratio (the ratio scales linearly with the
    learning rate for SGD and, to first order, for Adam; for a rate too low the fastest layer's ratio is used,
    so no layer is pushed past the target; with a schedule, its peak rate), or a learning-rate finder / schedule;
    for weight growth, one decade down (``fix_lr_backoff``) and a re-check, since growth compounds and does not
    measure the excess; for a spike or a step up, the schedule edited (capped at its base rate, a step schedule's
    gamma below 1) rather than the base rate lowered.
    """
    spike = find_lr_spike(run, th)
    if spike is not None:
        before = run.steps < spike.first
        base = _judge_ratios(run, th, ctx, before) if before.sum() >= th.min_recorded_steps else []
        if isinstance(base, list) and base:
            # The base rate was wrong before the spike too: that finding leads, and says the spike came on top.
            f = base[0]
            return [replace(f, message=f.message + f"; on top of it the schedule spiked ×{fmt_num(spike.factor)} "
                                                   f"on {fmt_steps((spike.first, spike.last))}",
                            evidence={**f.evidence, "lr_spike": _spike_evidence(spike)})]
        return [_spike_finding(run, th, spike)]
    up = find_lr_step_up(run, th)
    if up is None:
        return _judge_ratios(run, th, ctx, None)
    before = run.steps < up.step
    base = _judge_ratios(run, th, ctx, before)
    if isinstance(base, list) and base:
        f = base[0]
        return [replace(f, message=f.message + f"; on top of it the schedule stepped up ×{fmt_num(up.factor)} at "
                                               f"step {up.step}",
                        evidence={**f.evidence, "lr_step_up": _step_up_evidence(up)})]
    harm = _step_up_harm(run, th, ctx, up)
    return [_step_up_finding(run, th, replace(up, harm=harm))] if harm else []


def _spike_evidence(s: LrSpike) -> dict[str, object]:
    return {"first_step": s.first, "last_step": s.last, "peak_lr": s.peak, "base_lr": s.base, "factor": s.factor,
            "last_step_before": s.before, "first_step_after": s.after, "count": s.count}


def _spike_finding(run: Run, th: Thresholds, s: LrSpike) -> Finding:
    opt = optimizer_name(run) or "optimizer"
    more = f" ({s.count} such spikes; the first is shown)" if s.count > 1 else ""
    msg = (f"the learning rate spiked ×{fmt_num(s.factor)} on {fmt_steps((s.first, s.last))}: {fmt_num(s.peak)} "
           f"instead of the base {fmt_num(s.base)} ({opt}) the schedule uses before (step {s.before}) and after "
           f"(step {s.after}) it{more} (threshold ×{fmt_num(th.lr_spike_factor)} the run's median rate)")
    evidence: dict[str, object] = {"direction": "high", "lr": s.base, "lr_spike": _spike_evidence(s),
                                   "threshold": th.lr_spike_factor, "first_step": s.first}
    detail = LearningRateDetail(direction="high", factor=1.0 / s.factor, suggested_lr=s.base, spike=s)
    conf = confidence(ratio_margin(s.factor, th.lr_spike_factor), th.confidence_floor)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning-rate spike in the schedule", msg,
                   steps=(s.first, s.last), evidence=evidence, confidence=conf, detail=detail)


def _step_up_evidence(u: LrStepUp) -> dict[str, object]:
    return {"step": u.step, "last_step_before": u.before, "old_lr": u.old, "new_lr": u.new, "factor": u.factor,
            "last_step": u.last, **{k: v for k, v in u.harm}}


def _step_up_harm(run: Run, th: Thresholds, ctx: Context, u: LrStepUp) -> tuple[tuple[str, object], ...]:
    """What the stretch after a step up shows, judged on its own: the logged training or validation loss ends
    above its level just before the step (median of its last ``early_min_steps`` values before it, against the
    median of the last ``tail_fraction`` of the values after it), the weights grew ``lr_weight_growth``× or more
    over the stretch, or its update/weight ratios are out of the band. Empty when it shows none of these (a
    constant warm-up that ends: the base rate the schedule steps up to trains normally)."""
    harm: list[tuple[str, object]] = []
    loss: dict[str, tuple[float, float]] = {}
    for key in ("val_loss", "train_loss"):
        st, v = finite_series(run.metrics.get(key))
        pre, post = v[st < u.step][-th.early_min_steps:], v[(st >= u.step) & (st <= u.last)]
        if pre.size and post.size:
            a, b = float(np.median(pre)), float(np.median(post[tail_slice(post.size, th)]))
            if b > a:
                loss[key] = (a, b)
    if loss:
        harm.append(("loss", loss))
    after = (run.steps >= u.step) & (run.steps <= u.last)
    w = weighted_layers(run)
    growth = _weight_growth(run, [p for _, p in w], after) if w else None
    if growth is not None and growth >= th.lr_weight_growth:
        harm.append(("growth", growth))
    judged = _judge_ratios(run, th, ctx, after) if after.sum() >= th.min_recorded_steps else []
    if isinstance(judged, list) and judged:
        harm.append(("ratio", judged[0].message))
    return tuple(harm)


def _step_up_finding(run: Run, th: Thresholds, u: LrStepUp) -> Finding:
    opt = optimizer_name(run) or "optimizer"
    harm = dict(u.harm)
    said: list[str] = []
    strengths: list[float] = []
    loss = harm.get("loss")
    if isinstance(loss, dict):
        for key, (a, b) in loss.items():
            said.append(f"the {key.replace('_', ' ')} went from {fmt_num(a)} before it to {fmt_num(b)} at the end")
            strengths.append(ratio_margin(b, a))
    growth = harm.get("growth")
    if isinstance(growth, float):
        said.append(f"the weights grew {fmt_num(growth)}× over the stretch after it")
        strengths.append(ratio_margin(growth, th.lr_weight_growth))
    ratio = harm.get("ratio")
    if isinstance(ratio, str):
        said.append(f"after it, {ratio}")
        strengths.append(1.0)
    end = "the end of the run" if u.last == int(run.steps[-1]) else f"step {u.last}"
    msg = (f"the learning rate stepped up ×{fmt_num(u.factor)} at step {u.step} and stayed up until {end}: "
           f"{fmt_num(u.new)} instead of the {fmt_num(u.old)} ({opt}) the schedule used up to step {u.before} "
           f"(threshold ×{fmt_num(th.lr_spike_factor)} the highest rate before it); " + "; ".join(said))
    evidence: dict[str, object] = {"direction": "high", "lr": u.old, "lr_step_up": _step_up_evidence(u),
                                   "threshold": th.lr_spike_factor, "first_step": u.step}
    detail = LearningRateDetail(direction="high", factor=1.0 / u.factor, suggested_lr=u.old, step_up=u)
    conf = confidence(mean(ratio_margin(u.factor, th.lr_spike_factor), agree(*strengths)), th.confidence_floor)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning-rate step up in the schedule", msg,
                   steps=(u.step, u.last), evidence=evidence, confidence=conf, detail=detail)


def _peak_scale(run: Run, r: np.ndarray) -> tuple[np.ndarray, float | None, int | None]:
    """Per-step factors lr_peak / lr_t that scale the recorded ratios ``r`` (S × layers, NaN where not judged) to
    the schedule's peak rate, the peak (None when the log records no rate) and the first recorded step at it.
    Steps without a recorded rate keep their ratio (factor 1)."""
    ones = np.ones(r.shape[0])
    lr = _recorded_lr(run)
    if lr is None:
        return ones, None, None
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(lr) & (lr > 0)
    used = valid & np.isfinite(r).any(axis=1)
    if not used.any():
        return ones, None, None
    peak = float(np.max(lr[used]))
    first = int(run.steps[np.flatnonzero(used & (lr >= peak))[0]])
    return np.where(valid, peak / np.where(valid, lr, 1.0), 1.0), peak, first


def _judge_ratios(run: Run, th: Thresholds, ctx: Context, rows: np.ndarray | None) -> RuleResult:
    """The update/weight-ratio judgement of ``learning_rate`` on the recorded steps ``rows`` (all when None)."""
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
    if rows is not None:
        r[~rows] = np.nan
    # The ratio scales with the step's rate: scaled to the schedule's peak, every step says what the rate the user
    # sets (the peak a warm-up climbs to, a decay starts from) does, and a cosine tail does not hide a peak that
    # was too high (nor a warm-up's small first steps a rate too low).
    scale, peak, peak_step = _peak_scale(run, r)
    r = r * scale[:, None]
    varied = bool((scale[np.isfinite(r).any(axis=1)] > 1.0).any())
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
    growth = _weight_growth(run, cols, rows)
    lr = peak if peak is not None else current_lr(run)

    def by_init_step() -> Finding | None:
        # Judged on the whole run only: before a spike or a step up, the damage may be theirs.
        if rows is not None or not adaptive or lr is None:
            return None
        init = _init_step(run, th, ctx, [cols[j] for j in judged], lr, peak_step)
        return _too_high_by_init_step(run, th, init, ratio, growth, target) if init is not None else None

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
        return [_too_high_by_growth(run, th, growth, ratio, adaptive, target, lr, varied)]
    elif (f_init := by_init_step()) is not None:
        return [f_init]
    elif (rows is None and ratio < th.lr_slow_ratio_fraction * target
          and (slow := _slow_steady_progress(run, th)) is not None):
        return [_too_low_by_progress(run, th, ratio, per_layer, target, adaptive, slow, lr, varied)]
    else:
        return []
    hits, judged_steps = int(out[ok].sum()), int(ok.sum())
    frac = hits / judged_steps
    if frac < th.persistence:
        if direction == "high" and growth is not None and growth >= th.lr_weight_growth:
            return [_too_high_by_growth(run, th, growth, ratio, adaptive, target, lr, varied)]
        if direction == "high" and (f_init := by_init_step()) is not None:
            return [f_init]
        return []
    # Too low: scale so that the fastest judged layer reaches the target, never past it (a multiplier taken
    # from the median would push layers that already move normally far above the band). Too high: scale the
    # median down to the target.
    fastest = float(np.nanmax(per_layer)) if direction == "low" else ratio
    factor = target / fastest
    suggested = lr * factor if lr is not None else None
    opt = optimizer_name(run) or "optimizer"
    steps = step_range(run.steps[ok & out])
    lr_txt = f" (lr {fmt_num(lr)}, {opt})" if lr is not None else f" ({opt})"
    at_peak = (f", each step's ratio scaled to the schedule's peak rate {fmt_num(lr)} (× peak / that step's rate)"
               if varied and lr is not None else "")
    msg = (f"median update/weight ratio {fmt_num(ratio)} across {len(w)} weighted layer(s) on "
           f"{fmt_steps(steps)} is too {direction}{lr_txt}: band {fmt_num(th.lr_ratio_low)}–{fmt_num(high)}, "
           f"typical ≈ {fmt_num(target)} ({pct(frac)} of steps outside{at_peak})")
    evidence = {
        "median_update_ratio": ratio, "direction": direction, "threshold": bound, "target_ratio": target,
        "adaptive_optimizer": adaptive, "lr": lr, "suggested_lr": suggested, "lr_factor": factor,
        "per_layer_ratio": {run.layers[w[j][0]].name: float(per_layer[j]) for j in range(len(w))},
        "fraction_of_steps": frac, "excluded_layers": sorted(starved & {run.layers[i].name for i, _ in w}),
        "scaled_to_peak_lr": lr if varied else None,
    }
    title = f"Learning rate too {direction}"
    crush = _clip_crush(run, th, rows) if direction == "low" else None
    if crush is not None:
        title = "Updates too small: clipping throws most of every step away"
        msg += (f" — not because of the learning rate: gradient clipping keeps {fmt_num(crush)} of the gradient "
                f"norm on the median recorded step (threshold {fmt_num(th.clip_crush_ratio)})"
                + (", about 1/scale of the GradScaler: the loss-scaled gradients are clipped before "
                   "scaler.unscale_(optimizer)" if run.scaler_passed or _power_of_two(1.0 / crush) else ""))
        evidence["clip_kept_fraction"] = crush
    detail = LearningRateDetail(direction=direction, ratio=ratio, target=target, factor=factor,
                                suggested_lr=suggested, peak_lr=lr if varied else None, clip_crush=crush)
    return [Finding(code, Severity.WARNING, title, msg, layers=tuple(bad_layers), steps=steps, evidence=evidence,
                    confidence=confidence(mean(support(hits, judged_steps, th.confidence_support_level),
                                               ratio_margin(ratio, bound) if direction == "high"
                                               else ratio_margin(1.0 / ratio, 1.0 / bound)),
                                          th.confidence_floor), detail=detail)]


def _clip_crush(run: Run, th: Thresholds, rows: np.ndarray | None) -> float | None:
    """The median share of the backward gradient norm the optimizer stepped with, when clipping is active and
    that share is below ``clip_crush_ratio`` (clipping, not the rate, makes the updates tiny); else None."""
    n = min(run.clip_norm.size, run.grad_norm.size)
    if not n or not run.clipping:
        return None
    c, g = run.clip_norm[:n], run.grad_norm[:n]
    keep = np.isfinite(c) & np.isfinite(g) & (g > 0)
    if rows is not None:
        keep &= rows[:n]
    if keep.sum() < th.min_recorded_steps:
        return None
    share = float(np.median(c[keep] / g[keep]))
    return share if share < th.clip_crush_ratio else None


def _power_of_two(x: float, tol: float = 0.05) -> bool:
    """``x`` is within ``tol`` (relative) of a power of two of at least 2^8: a loss scale."""
    if not (np.isfinite(x) and x >= 256):
        return False
    k = round(math.log2(x))
    return abs(x / 2.0 ** k - 1.0) < tol


_DAMAGE = (Code.DIVERGENCE, Code.EXPLODING_GRADIENTS, Code.DEAD_RELU)
"""Findings of rules that run before ``learning_rate`` that show the damage of steps too large (with
``underfitting``, which ``learning_rate`` asks itself)."""


def _init_step(run: Run, th: Thresholds, ctx: Context, cols: list[int], lr: float,
               peak_step: int | None) -> LrInitStep | None:
    """Adam-like steps large against the weights' initial scale, with damage to show for it (see
    ``learning_rate``), or None."""
    from gradscope.judge.rules.fitting import underfitting  # the fit is evidence here; fitting never reads optim

    std = np.array([run.params[p].init_std or np.nan for p in cols], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = lr / std[np.isfinite(std) & (std > 0)]
    if rel.size == 0:
        return None
    scale = float(np.median(rel))
    if scale < th.lr_init_step_adaptive:
        return None
    fit = underfitting(run, th, ctx)
    shown = [f for f in [*ctx.findings, *(fit if isinstance(fit, list) else [])]
             if f.code in (*_DAMAGE, Code.UNDERFITTING) and f.severity is not Severity.INFO]
    if not shown:
        return None
    floor = th.confidence_floor
    strength = agree(*((f.confidence - floor) / (1.0 - floor) if floor < 1.0 else 0.0 for f in shown))
    return LrInitStep(peak=lr, peak_step=peak_step if peak_step is not None else int(run.steps[0]), scale=scale,
                      damage=tuple(dict.fromkeys(f.code for f in shown)), strength=strength)


def _too_high_by_init_step(run: Run, th: Thresholds, init: LrInitStep, ratio: float, growth: float | None,
                           target: float) -> Finding:
    factor = th.lr_target_ratio_adaptive / init.scale
    suggested = init.peak * factor
    opt = optimizer_name(run) or "optimizer"
    steps = step_range(run.steps)
    grew = f", the weights grew {fmt_num(growth)}× their initial norm" if growth is not None else ""
    damage = ", ".join(c.value for c in init.damage)
    msg = (f"{opt} moves each weight by about the learning rate per step, and its peak rate {fmt_num(init.peak)} is "
           f"{fmt_num(init.scale)}× the weights' initial scale (median over layers of lr / initial std; threshold "
           f"{fmt_num(th.lr_init_step_adaptive)}×, typical ≈ {fmt_num(target)}), so each step moves a weight by "
           f"about {fmt_num(init.scale)} of its initial size; the run shows the damage ({damage}{grew}; median "
           f"update/weight ratio {fmt_num(ratio)}, lower as the weights grew): the learning rate is too high")
    evidence = {"median_update_ratio": ratio, "direction": "high", "threshold": th.lr_init_step_adaptive,
                "lr_over_init_std": init.scale, "damage": [c.value for c in init.damage], "weight_growth": growth,
                "target_ratio": target, "adaptive_optimizer": True, "lr": init.peak, "suggested_lr": suggested,
                "lr_factor": factor}
    detail = LearningRateDetail(direction="high", ratio=init.scale, target=th.lr_target_ratio_adaptive,
                                factor=factor, suggested_lr=suggested, init_step=init, peak_lr=init.peak)
    strength = mean(ratio_margin(init.scale, th.lr_init_step_adaptive), init.strength)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", msg, steps=steps,
                   evidence=evidence, confidence=confidence(strength, th.confidence_floor), detail=detail)


def _slow_steady_progress(run: Run, th: Thresholds) -> dict[str, float] | None:
    """The training loss falls steadily but slowly: a Mann–Kendall test (Kendall's tau of loss against step,
    one-sided) says it decreases with p below ``lr_trend_p``, the Theil–Sen slope's ``lr_trend_confidence``
    interval lies below zero, and the loss fell by less than ``lr_slow_max_drop`` of its early level over the
    run. None otherwise (too few points, a plateau, noise, or real progress). Robust statistics, so one noisy
    epoch neither makes nor breaks the trend (Sen 1968; Mann 1945; Kendall 1975)."""
    st, v = finite_series(run.metrics.get("train_loss"))
    if v.size < th.lr_trend_min_points or not (v > 0).all():
        return None
    t = falling_trend(st, v, th)
    k = early_count(v.size, th)
    start, end = float(np.median(v[:k])), float(np.median(v[tail_slice(v.size, th)]))
    drop = 1.0 - end / start
    if not (t["p"] < th.lr_trend_p and t["slope_high"] < 0 and drop < th.lr_slow_max_drop):
        return None
    return {**t, "drop": drop, "start": start, "end": end, "span": float(st[-1] - st[0])}


def _too_low_by_progress(run: Run, th: Thresholds, ratio: float, per_layer: np.ndarray, target: float,
                         adaptive: bool, slow: dict[str, float], lr: float | None, varied: bool) -> Finding:
    fastest = float(np.nanmax(per_layer))
    factor = target / fastest if fastest > 0 else 1.0
    suggested = lr * factor if lr is not None else None
    opt = optimizer_name(run) or "optimizer"
    lr_txt = f" (lr {fmt_num(lr)}, {opt})" if lr is not None else f" ({opt})"
    steps = step_range(run.steps)
    msg = (f"training loss is still falling steadily (Theil–Sen slope {fmt_num(1000 * slow['slope'])} per 1000 "
           f"steps, {100 * th.lr_trend_confidence:.0f}% interval {fmt_num(1000 * slow['slope_low'])} to "
           f"{fmt_num(1000 * slow['slope_high'])}; Mann–Kendall p = {fmt_num(slow['p'])}) but fell only "
           f"{100 * slow['drop']:.0f}% over the run ({fmt_num(slow['start'])} → {fmt_num(slow['end'])}, threshold "
           f"{100 * th.lr_slow_max_drop:.0f}%), while the median update/weight ratio {fmt_num(ratio)} is below "
           f"{fmt_num(th.lr_slow_ratio_fraction)}× the typical {fmt_num(target)} for "
           f"{'adaptive optimizers' if adaptive else 'SGD'}: the learning rate is too "
           f"low{lr_txt}")
    evidence = {"median_update_ratio": ratio, "direction": "low", "target_ratio": target,
                "adaptive_optimizer": adaptive, "lr": lr, "suggested_lr": suggested, "lr_factor": factor,
                "loss_trend": slow, "threshold": th.lr_slow_max_drop}
    detail = LearningRateDetail(direction="low", ratio=fastest, target=target, factor=factor, suggested_lr=suggested,
                                peak_lr=lr if varied else None)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too low", msg, steps=steps,
                   evidence=evidence, detail=detail,
                   confidence=confidence(mean(1.0 - slow["p"], ratio_margin(th.lr_slow_ratio_fraction * target,
                                                                            ratio)), th.confidence_floor))


def _weight_growth(run: Run, cols: list[int], rows: np.ndarray | None = None) -> float | None:
    """Median over layers of max_t ||W_t|| / ||W_0|| (layers starting at norm 0 left out), over the recorded
    steps ``rows`` (all when None)."""
    pn = stat(run, "param", "norm")
    if pn is not None and rows is not None:
        pn = pn[rows]
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
                        target: float, lr: float | None, varied: bool) -> Finding:
    # Growth compounds once updates overshoot (95 000× in an LSTM at lr 20 without clipping), so it does not say
    # by how much the rate is too high: one decade down (``fix_lr_backoff``), then re-check — lr / growth
    # (20 → 2e-4) would stop training altogether.
    factor = th.fix_lr_backoff
    opt = optimizer_name(run) or "optimizer"
    lr_txt = f" (lr {fmt_num(lr)}, {opt})" if lr is not None else f" ({opt})"
    steps = step_range(run.steps)
    msg = (f"weights grew {fmt_num(growth)}× their initial norm over {fmt_steps(steps)} (median over layers; "
           f"threshold {fmt_num(th.lr_weight_growth)}×): the learning rate is too high{lr_txt}")
    evidence = {"median_update_ratio": ratio, "direction": "high", "threshold": th.lr_weight_growth,
                "weight_growth": growth, "target_ratio": target, "adaptive_optimizer": adaptive, "lr": lr,
                "suggested_lr": lr * factor if lr is not None else None, "lr_factor": factor}
    detail = LearningRateDetail(direction="high", ratio=ratio, target=target, factor=factor,
                                suggested_lr=lr * factor if lr is not None else None, peak_lr=lr if varied else None)
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", msg, steps=steps,
                   evidence=evidence, confidence=confidence(ratio_margin(growth, th.lr_weight_growth),
                                                            th.confidence_floor), detail=detail)


# ---------------------------------------------------------------- fixes

def spike_fix(s: LrSpike) -> Fix:
    """Edit the schedule: the base rate was fine before and after the spike, so cap the rate the scheduler sets
    at that base (after ``scheduler.step()``) and find what put the spike there."""
    return Fix(FixKind.LEARNING_RATE,
               f"Take the ×{sig(s.factor)} spike out of the learning-rate schedule on {fmt_steps((s.first, s.last))} "
               f"(lr {sig(s.peak)} there, {sig(s.base)} before and after): the base rate is not the problem — find "
               f"what sets the spike (an lr_lambda, a warm restart, a manual group['lr'] = ...) and fix it, or cap "
               f"the rate at the base after each scheduler.step()",
               f"# after scheduler.step(), every step: the schedule's rate, never above its base {sig(s.base)}\n"
               f"for group in optimizer.param_groups:\n    group[\"lr\"] = min(group[\"lr\"], {sig(s.base)})")


def clip_crush_fix(run: Run, kept: float, th: Thresholds) -> Fix:
    """Clipping keeps a sliver of every step: unscale before clipping under a GradScaler (the usual cause, and
    the kept share is then about 1/scale), else a threshold far below the gradient norm: raise it."""
    if run.scaler_passed or _power_of_two(1.0 / kept):
        return Fix(FixKind.CLIPPING, f"Unscale the gradients before clipping them: the optimizer steps with "
                   f"{fmt_num(kept)} of each gradient (about 1/loss scale), so raising the learning rate would only "
                   f"hide it",
                   "# in the AMP loop, between scaler.scale(loss).backward() and scaler.step(optimizer):\n"
                   "scaler.unscale_(optimizer)\n"
                   "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")
    norm = suggest_max_norm(run, th)
    at = sig(norm) if norm is not None else "the 90th percentile of the gradient norm"
    return Fix(FixKind.CLIPPING, f"Raise the clipping threshold to {at}: it binds on every step and keeps "
               f"{fmt_num(kept)} of each gradient, so the learning rate never acts",
               f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={at if norm is not None else 1.0})")


def step_up_fix(u: LrStepUp) -> Fix:
    """Edit the schedule: the rate it held before the step up trained, and what came after did not; a step
    schedule's gamma above 1 (or an lr_lambda that grows) is the usual cause."""
    return Fix(FixKind.LEARNING_RATE,
               f"Take the ×{sig(u.factor)} step up out of the learning-rate schedule at step {u.step} (lr {sig(u.new)} "
               f"from there, {sig(u.old)} before): the base rate is not the problem — a StepLR/MultiStepLR gamma "
               f"above 1 (gamma=10 where 0.1 was meant), an lr_lambda that grows, or a manual group['lr'] = ... "
               f"is; fix that, or cap the rate at {sig(u.old)} after each scheduler.step()",
               f"# a step decay divides the rate: gamma < 1, e.g. MultiStepLR(optimizer, milestones, gamma=0.1)\n"
               f"# after scheduler.step(), every step: never above the rate the schedule held, {sig(u.old)}\n"
               f"for group in optimizer.param_groups:\n    group[\"lr\"] = min(group[\"lr\"], {sig(u.old)})")


def _peak_lr_fix(new_lr: float, peak: float, why: str) -> Fix:
    """Set the schedule's peak rate (what the optimizer is built with, or a one-cycle ``max_lr``): the scheduler
    scales every step's rate from it, so setting ``group["lr"]`` alone would be overwritten at its next step."""
    return Fix(FixKind.LEARNING_RATE,
               f"Set the schedule's peak learning rate to {sig(new_lr, 1)} (was {sig(peak, 2)}; the rate the "
               f"optimizer is built with, or the scheduler's max_lr): {why}",
               f"# before the scheduler is created: it scales every step's rate from this base rate\n"
               f"for group in optimizer.param_groups:\n    group[\"lr\"] = {sig(new_lr, 1)}")


def learning_rate_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, LearningRateDetail) else LearningRateDetail()
    if d.spike is not None:
        return [spike_fix(d.spike)]
    if d.clip_crush is not None:
        return [clip_crush_fix(run, d.clip_crush, th)]
    if d.step_up is not None:
        return [step_up_fix(d.step_up)]
    # The ratio scales with the rate: say where this factor takes it (lowering the rate cannot raise it).
    growth = f.evidence.get("weight_growth") if isinstance(f.evidence, dict) else None
    if isinstance(growth, int | float) and growth > 0:
        why = (f"the weights grew {fmt_num(float(growth))}× their initial norm; growth compounds once updates "
               f"overshoot, so it does not say by how much: lower the rate a decade and re-check")
    elif d.ratio is not None and d.ratio > 0:
        why = f"scales the update/weight ratio from {sig(d.ratio)} to about {sig(d.ratio * d.factor)}"
        if d.target is not None:
            why += f" (typical {sig(d.target)})"
    else:
        why = "brings updates into the usual band"
    if d.init_step is not None:
        why = (f"{sig(d.init_step.scale)}× the weights' initial scale per step is far above the typical "
               f"{sig(th.lr_target_ratio_adaptive)} (Adam moves each weight by about the learning rate); a warm-up "
               f"helps too")
    fixes: list[Fix | None] = [_peak_lr_fix(d.suggested_lr, d.peak_lr, why)
                               if d.peak_lr is not None and d.suggested_lr is not None and _lr_varied(run)
                               else lr_fix(run, d.factor, why, d.suggested_lr)]
    if d.direction == "low":
        fixes.append(Fix(FixKind.TRAIN_LONGER, "If the learning rate must stay, train much longer", ""))
    return fixes


def _lr_varied(run: Run) -> bool:
    lr = _recorded_lr(run)
    if lr is None:
        return False
    lr = lr[np.isfinite(lr) & (lr > 0)]
    return bool(lr.size and lr.max() > lr.min())


RULES = (
    Rule(Code.LEARNING_RATE, learning_rate, learning_rate_fixes, "optimizer",
         needs=(LOG, STEPS, param_stat("update_ratio"))),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
