"""Loss-curve rules: divergence (non-finite or runaway loss/gradients) and unstable loss (spikes, oscillation).

Both work on the user's logged training loss (``scope.log(train_loss=...)`` or a TensorBoard tag) and on the
total gradient norm gradscope records for every step, so they also run on a TensorBoard-only run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.judge.confidence import agree, confidence, ratio_margin, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.judge.rules._common import (
    Context,
    Need,
    Rule,
    RuleResult,
    early_count,
    early_reference,
    finite_series,
    fmt_num,
    fmt_steps,
    grad_to_weight_before,
    head_outputs,
    is_adaptive,
    is_classifier,
    label,
    loss_scaling,
    nanmedian,
    stat,
    step_range,
    tail_slice,
)
from gradscope.judge.rules._fixes import clip_fix, lr_fix
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run

_MAD_TO_SIGMA = 1.4826   # MAD × 1.4826 estimates the standard deviation of a normal sample (a constant, not a knob)


def _scaler_active(run: Run) -> bool:
    return run.scaler_passed


@dataclass(frozen=True)
class FirstStep:
    """What the loss rules hand their fixes: the first bad step (the clipping norm comes from the steps
    before it)."""

    step: int | None = None
    sudden: bool = False    # NaN/Inf straight from the usual gradient level: a non-finite value got in, no overflow


def _no_loss(run: Run, th: Thresholds) -> str | None:
    if run.header is None and "train_loss" not in run.metrics and "val_loss" not in run.metrics:
        return "no gradscope log and no loss logged"
    return None


def _no_curve(run: Run, th: Thresholds) -> str | None:
    n = 2 * th.early_min_steps
    if finite_series(run.metrics.get("train_loss"))[1].size < n and np.isfinite(run.all_grad_norm).sum() < n:
        return "no training loss logged (train_loss) and too few per-step gradient norms"
    return None


LOSS_OR_LOG = Need("a gradscope log or a logged loss", _no_loss)
LOSS_CURVE = Need("a training loss curve (``train_loss``) or per-step gradient norms, at least "
                  "2 × ``early_min_steps`` values", _no_curve)


def divergence(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Divergence: the loss or the gradients became NaN/Inf, or the loss ran away.

    Symptom: ``loss = nan``; metrics stop making sense; or a loss that ends far above where it started.

    Detected when gradscope recorded a non-finite loss, activation, output or gradient (first step and first
    layer in forward order), when the logged training or validation loss is NaN/Inf, or when the total
    gradient norm of a step is non-finite — on a step an AMP GradScaler did not skip (a scaler skips
    overflowing steps on purpose and recovers; also one that ``watch`` was not given, recognized by
    ``loss_scaling``). Also when the training loss at the end (median of the last
    ``tail_fraction``) is ``divergence_loss_growth`` times its starting value, or for a classifier (see
    ``is_classifier``) times the chance-level loss log(C) when that is lower (a warning): a run whose loss blew
    up within its first logged values is not excused by comparing it with them.

    Why it matters: one NaN poisons every weight it touches; nothing trained after it is usable.

    Confidence: for NaN/Inf, the Wilson lower bound (``confidence_support_level``) of the share of per-step
    gradient norms (or logged losses) from the first bad step on that stayed non-finite — a run that stays NaN
    diverged for good — agreeing with the number of kinds of non-finite value seen (loss, gradient, activation:
    k of k); for a finite runaway, how far the end is past ``divergence_loss_growth`` (``ratio_margin``) agreeing
    with the share of the last part above it; mapped through ``confidence`` from ``confidence_floor``.

    When the per-step gradient norm stayed below ``exploding_growth``× its early level up to the first NaN/Inf
    (nothing overflowed: a non-finite weight, input or loss got in), the first fix finds where it came from
    instead of lowering the learning rate.

    Fixes: a lower learning rate; gradient clipping; checking the inputs/labels of the first bad step;
    a numerically stable loss (``nn.CrossEntropyLoss`` on logits rather than ``log(softmax)``). When the
    gradients never grew before the NaN, only the search for where it came from: neither a lower rate nor
    clipping stops a NaN weight or input.
    """
    code = Code.DIVERGENCE
    tl = run.metrics.get("train_loss")
    skipped_steps = run.scaler_skipped_steps()
    # A GradScaler not passed to watch (``loss_scaling``) skips overflowing steps just the same.
    unpassed = (not _scaler_active(run) and (bool(run.nonfinite) or not np.isfinite(run.all_grad_norm).all())
                and loss_scaling(run, th) is not None)
    scaler = _scaler_active(run) or unpassed
    events: list[tuple[int, str, str | None]] = []   # (step, what, layer)
    for rec in run.nonfinite:
        if rec.step in skipped_steps and rec.where != "loss":
            continue
        events.append((rec.step, f"non-finite {rec.where}", rec.layer or rec.param))
    for key in ("train_loss", "val_loss"):
        s = run.metrics.get(key)
        if s is None or len(s) == 0:
            continue
        bad = ~np.isfinite(np.asarray(s.values, dtype=float))
        if bad.any():
            events.append((int(np.asarray(s.steps)[bad].min()), f"{key} is NaN/Inf", None))
    if run.all_grad_norm.size:
        bad = ~np.isfinite(run.all_grad_norm)
        bad &= ~np.isin(run.all_steps, list(skipped_steps))
        # With a GradScaler, isolated overflows are skipped and training goes on; only a gradient norm
        # that stays non-finite to the end is divergence.
        if bad.any() and (not scaler or not np.isfinite(run.all_grad_norm[-1])):
            events.append((int(run.all_steps[bad].min()), "total gradient norm is NaN/Inf", None))
    if scaler:
        # Under a scaler, gradient-only events that training recovered from are not divergence.
        recovered = bool(run.all_grad_norm.size and np.isfinite(run.all_grad_norm[-1]))
        if unpassed and not recovered:
            # Its skipped steps are unknown, so the last step's overflow looks like any other: training
            # recovered when the weights and the training loss are finite at the end.
            pn = run.param_stats.get("norm")
            _, tl_v = finite_series(tl)
            raw = np.asarray(tl.values, dtype=float) if tl is not None and len(tl) else np.zeros(0)
            recovered = (pn is not None and pn.size > 0 and bool(np.isfinite(pn[-1]).all())
                         and tl_v.size > 0 and bool(np.isfinite(raw[-1])))
        if recovered:
            events = [e for e in events if "gradient" not in e[1] or "loss" in e[1]]
    if events:
        events.sort(key=lambda e: e[0])
        first_step = events[0][0]
        first_layer = next((e[2] for e in events if e[2]), None)
        what = sorted({e[1] for e in events})
        msg = f"{events[0][1]} at step {first_step}"
        if first_layer:
            step_l = next(e[0] for e in events if e[2] == first_layer)
            msg += f"; first non-finite value in {first_layer} (step {step_l})"
        if len(what) > 1:
            msg += f"; also: {', '.join(w for w in what if w != events[0][1])}"
        last = max(e[0] for e in events)
        stayed, after = _stayed_nonfinite(run, first_step)
        sudden = _sudden(run, first_step, th)
        return [Finding(code, Severity.ERROR, "Training diverged (NaN/Inf)", msg,
                        layers=(first_layer,) if first_layer else (), steps=(first_step, last),
                        evidence={"first_step": first_step, "first_layer": first_layer, "events": what,
                                  "scaler_skipped_steps": len(skipped_steps), "nonfinite_after": [stayed, after]},
                        confidence=confidence(agree(support(stayed, after, th.confidence_support_level),
                                                    support(len(what), len(what), th.confidence_support_level)),
                                              th.confidence_floor),
                        detail=FirstStep(first_step, sudden=sudden))]
    # A finite runaway: the loss ends far above where it started.
    st, v = finite_series(tl)
    if v.size >= th.fit_min_points:
        k = early_count(v.size, th)
        start = float(nanmedian(v[:k]))
        end = float(nanmedian(v[tail_slice(v.size, th)]))
        # A classifier's reference is also the chance-level loss log(C): a run that blew up within its first
        # logged values starts far above it, and comparing with that start would excuse the whole run.
        c = head_outputs(run)
        chance = math.log(c) if c is not None and c >= 2 and is_classifier(run, th) else None
        ref, against = start, "its start"
        if chance is not None and chance < start:
            ref, against = chance, f"the chance-level loss log(C) = {fmt_num(chance)}"
        if ref > 0 and end >= th.divergence_loss_growth * ref:
            steps = step_range(st[tail_slice(v.size, th)])
            rose = (f"rose from {fmt_num(start)} to {fmt_num(end)}" if end > start else
                    f"started at {fmt_num(start)} and ended at {fmt_num(end)}")
            tail = v[tail_slice(v.size, th)]
            conf = confidence(agree(ratio_margin(end / ref, th.divergence_loss_growth),
                                    support(int((tail >= th.divergence_loss_growth * ref).sum()), int(tail.size),
                                            th.confidence_support_level)), th.confidence_floor)
            return [Finding(code, Severity.WARNING, "Training loss diverging",
                            f"training loss {rose} ({fmt_num(end / ref)}× {against}, threshold "
                            f"{fmt_num(th.divergence_loss_growth)}×) over {fmt_steps(steps)}", steps=steps,
                            evidence={"start_loss": start, "end_loss": end, "first_step": steps[0] if steps else None},
                            confidence=conf, detail=FirstStep(steps[0] if steps else None))]
    return []


def _sudden(run: Run, first: int, th: Thresholds) -> bool:
    """The per-step gradient norm stayed below ``exploding_growth``× its early level (``early_reference``) up to
    step ``first``, where the numbers turned NaN/Inf: no overflow built up, a non-finite value got in (a weight
    written NaN, a bad batch, a log of 0 in the loss). False when there is nothing before it to tell, or when
    the gradients were already ``exploding_relative_grad``× the weights (``grad_to_weight_before``), or the
    updates before it were above the learning-rate band (median update/weight ratio over ``lr_ratio_high``,
    ``lr_ratio_high_adaptive`` for Adam-like optimizers): weights thrown that far overflow the forward pass
    without the gradient growing first."""
    gs, gv = (run.all_steps, run.all_grad_norm) if run.all_grad_norm.size else (run.steps, run.grad_norm)
    before = gv[(gs < first) & np.isfinite(gv)]
    if before.size < th.early_min_steps:
        return False
    huge = grad_to_weight_before(run, first)
    if huge is not None and huge > th.exploding_relative_grad:
        return False   # huge from the start: the explosion's overflow (``exploding_gradients``), nothing got in
    ur = stat(run, "param", "update_ratio")
    if ur is not None:
        prior = ur[run.steps < first]
        prior = prior[np.isfinite(prior)]
        high = th.lr_ratio_high_adaptive if is_adaptive(run) else th.lr_ratio_high
        if prior.size and float(np.median(prior)) > high:
            return False   # the updates were out of band: the weights were thrown into the overflow
    early = early_reference(before, th)
    return bool(math.isfinite(early) and early > 0 and float(np.max(before)) < th.exploding_growth * early)


def _stayed_nonfinite(run: Run, first: int) -> tuple[int, int]:
    """(non-finite, all) values from step ``first`` on, over the per-step gradient norms and the logged training
    loss: a run that stays NaN diverged for good; one that came back had an isolated event."""
    bad = total = 0
    gs, gv = run.all_steps, run.all_grad_norm
    if gv.size:
        later = gv[gs >= first]
        bad, total = int((~np.isfinite(later)).sum()), int(later.size)
    tl = run.metrics.get("train_loss")
    if tl is not None and len(tl):
        lv = np.asarray(tl.values, dtype=float)[np.asarray(tl.steps) >= first]
        if lv.size and (total == 0 or (~np.isfinite(lv)).mean() > bad / total):
            bad, total = int((~np.isfinite(lv)).sum()), int(lv.size)
    return bad, total


def _floored(values: np.ndarray, th: Thresholds) -> np.ndarray:
    """Positive copy for log-space tests: values under ``loss_log_floor`` × median raised to it; empty when
    the series has negative values or a non-positive median (a loss that is not a positive quantity)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.isfinite(v).all() or (v < 0).any():
        return np.zeros(0)
    med = float(np.median(v))
    if med <= 0:
        return np.zeros(0)
    return np.maximum(v, th.loss_log_floor * med)


def find_spikes(values: np.ndarray, th: Thresholds) -> np.ndarray:
    """Indices of spikes in a positive series: above (1+spike_rtol) × the rolling median of the previous
    ``spike_window`` values and ``spike_z`` robust standard deviations above it in log space."""
    v = _floored(values, th)
    n = v.size
    if v.size == 0 or n < th.early_min_steps + 1:
        return np.zeros(0, dtype=int)
    lv = np.log(v)
    ref = np.full(n, np.nan)
    w = th.spike_window
    for i in range(th.early_min_steps, min(w, n)):      # windows still filling up
        ref[i] = np.median(lv[:i])
    if n > w:   # full windows in one vectorized call (a per-point loop took ~1 s on 10,000 steps)
        ref[w:] = np.median(np.lib.stride_tricks.sliding_window_view(lv, w)[: n - w], axis=1)
    resid = lv - ref
    r = resid[np.isfinite(resid)]
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(r - np.median(r)))) if r.size else 0.0
    sigma = max(sigma, np.finfo(float).tiny)
    with np.errstate(invalid="ignore"):
        hit = (resid > math.log1p(th.spike_rtol)) & (resid > th.spike_z * sigma)
    return np.nonzero(hit)[0]


def _oscillation(values: np.ndarray, th: Thresholds) -> tuple[float, float] | None:
    """(median |Δ log loss| over the last part, relative progress over it) or None when too short."""
    v = _floored(values, th)
    if v.size == 0:
        return None
    tail = v[tail_slice(v.size, th)]
    if tail.size < 2 * th.early_min_steps:
        return None
    jitter = float(np.median(np.abs(np.diff(np.log(tail)))))
    h = tail.size // 2
    a, b = float(np.median(tail[:h])), float(np.median(tail[h:]))
    return jitter, (a - b) / a


def _rebound(values: np.ndarray, th: Thresholds) -> tuple[float, int, int] | None:
    """(largest rolling median / lowest earlier rolling median, index of that minimum, index of the peak)."""
    v = _floored(values, th)
    w = max(th.early_min_steps, min(th.spike_window, v.size // 4))
    if v.size < 2 * th.early_min_steps or v.size < 2 * w:
        return None
    rm = np.array([np.median(v[i - w:i]) for i in range(w, v.size + 1)])
    run_min = np.minimum.accumulate(rm)
    ratio = rm / run_min
    peak = int(np.argmax(ratio))
    lo = int(np.argmin(rm[: peak + 1]))
    # Indices into v of the windows' ends.
    return float(ratio[peak]), lo + w - 1, peak + w - 1


def unstable_loss(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Unstable loss: spikes or oscillation in the training loss (or spikes in the gradient norm).

    Symptom: a loss curve with sudden jumps, or one that bounces up and down without settling.

    Detected when the logged training loss has at least ``spike_min_count`` spikes — values above
    (1 + ``spike_rtol``) × the rolling median of the previous ``spike_window`` values and ``spike_z`` robust
    standard deviations (MAD) above it in log space, so normal mini-batch noise does not count — or when over
    the last ``tail_fraction`` of training the median step-to-step change of log loss exceeds
    ``oscillation_jitter`` while the loss makes less than ``oscillation_min_progress`` relative progress.
    Also when the training loss's rolling median (``spike_window`` values) climbs back to
    ``unstable_rebound`` × its lowest earlier rolling median (the run lost its progress). Spikes in the
    per-step total gradient norm (same test) alone, or a single loss spike, give an info finding.

    Why it matters: spikes mean some steps overshoot (learning rate too high for the curvature there, a bad
    batch, exploding gradients); oscillation means the optimizer bounces across a valley instead of descending.

    Confidence: the signals that fired agree as independent evidence (``agree``): spikes (loss, gradient norm)
    as the Wilson lower bound (``confidence_support_level``) of k / (k + ``spike_min_count``) for k spikes — more
    spikes, more sure; a rebound and an oscillation by how far they are past ``unstable_rebound`` and
    ``oscillation_jitter`` (``ratio_margin``); mapped through ``confidence`` from ``confidence_floor``.

    Fixes: a lower learning rate (or warm-up); gradient clipping at the healthy gradient norm; larger batches.
    """
    st, v = finite_series(run.metrics.get("train_loss"))
    have_loss = v.size >= 2 * th.early_min_steps
    gfin = np.isfinite(run.all_grad_norm)
    gst, gv = run.all_steps[gfin], run.all_grad_norm[gfin]
    have_grad = gv.size >= 2 * th.early_min_steps
    reasons: list[str] = []
    flagged: list[int] = []
    severity: Severity | None = None
    evidence: dict[str, object] = {}
    strengths: list[float] = []     # one per signal that fired (see the docstring)
    level = th.confidence_support_level
    if have_loss:
        sp = find_spikes(v, th)
        if sp.size:
            evidence["loss_spike_steps"] = st[sp].tolist()
            reasons.append(f"{sp.size} training-loss spike(s) above {fmt_num(1 + th.spike_rtol)}× the rolling "
                           f"median (first at step {int(st[sp[0]])})")
            flagged += st[sp].tolist()
            severity = Severity.WARNING if sp.size >= th.spike_min_count else Severity.INFO
            strengths.append(support(int(sp.size), int(sp.size) + th.spike_min_count, level))
        rb = _rebound(v, th)
        if rb is not None:
            evidence["loss_rebound"] = rb[0]
            if rb[0] >= th.unstable_rebound:
                reasons.append(f"training loss climbed back to {fmt_num(rb[0])}× its best level (rolling median "
                               f"lowest at step {int(st[rb[1]])}, highest after it at step {int(st[rb[2]])}; "
                               f"threshold {fmt_num(th.unstable_rebound)}×)")
                flagged += [int(st[rb[1]]), int(st[rb[2]])]
                severity = Severity.WARNING
                strengths.append(ratio_margin(rb[0], th.unstable_rebound))
        osc = _oscillation(v, th)
        if osc is not None:
            jitter, progress = osc
            evidence["loss_jitter"], evidence["loss_progress"] = jitter, progress
            if jitter > th.oscillation_jitter and progress < th.oscillation_min_progress:
                reasons.append(f"training loss oscillates: median change ×{fmt_num(math.exp(jitter))} between "
                               f"consecutive values (threshold ×{fmt_num(math.exp(th.oscillation_jitter))}) "
                               f"with {fmt_num(100 * progress)}% progress over the last part")
                flagged += st[tail_slice(v.size, th)].tolist()
                severity = Severity.WARNING
                strengths.append(ratio_margin(jitter, th.oscillation_jitter))
    if have_grad:
        gsp = find_spikes(gv, th)
        if gsp.size >= th.spike_min_count:
            evidence["grad_norm_spike_steps"] = gst[gsp].tolist()
            reasons.append(f"{gsp.size} gradient-norm spikes above {fmt_num(1 + th.spike_rtol)}× the rolling "
                           f"median (first at step {int(gst[gsp[0]])})")
            flagged += gst[gsp].tolist()
            severity = severity or Severity.INFO
            strengths.append(support(int(gsp.size), int(gsp.size) + th.spike_min_count, level))
    if severity is None:
        return []
    steps = step_range(flagged)
    evidence["first_step"] = steps[0] if steps else None
    return [Finding(Code.UNSTABLE_LOSS, severity, "Unstable training loss",
                    "; ".join(reasons) + f" ({fmt_steps(steps)})", steps=steps, evidence=evidence,
                    confidence=confidence(agree(*strengths), th.confidence_floor),
                    detail=FirstStep(steps[0] if steps else None))]


# ---------------------------------------------------------------- fixes

def _first_step(f: Finding) -> int | None:
    return f.detail.step if isinstance(f.detail, FirstStep) else None


def _nan_source_fix(f: Finding) -> Fix:
    where = f" (first seen in {label(f.layers[0])})" if f.layers else ""
    step = _first_step(f)
    return Fix(FixKind.TRAINING_LOOP,
               f"Find where the non-finite value came from{where}: the gradients were at their usual size until "
               f"step {step}, so nothing overflowed — a weight written NaN (a checkpoint, an in-place edit), a bad "
               f"batch or a log/division by 0 in the loss; stop at the first one",
               "# after optimizer.step() and after loading weights, on every step until it is found:\n"
               "for name, p in model.named_parameters():\n"
               "    if not torch.isfinite(p).all():\n"
               "        raise RuntimeError(f\"non-finite values in {name}\")")


def divergence_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    if isinstance(f.detail, FirstStep) and f.detail.sudden:
        # No growth before the NaN: neither a smaller learning rate nor clipping would have prevented it (a
        # NaN weight or input passes through clip_grad_norm_ as NaN).
        return [_nan_source_fix(f)]
    return [lr_fix(run, th.fix_lr_backoff, "the usual cause of a loss that blows up"),
            clip_fix(run, th, _first_step(f))]


def unstable_loss_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    return [lr_fix(run, th.fix_lr_backoff, "spikes and oscillation mean steps overshoot"),
            clip_fix(run, th, _first_step(f))]


RULES = (
    Rule(Code.DIVERGENCE, divergence, divergence_fixes, "loss", needs=(LOSS_OR_LOG,)),
    Rule(Code.UNSTABLE_LOSS, unstable_loss, unstable_loss_fixes, "loss", needs=(LOSS_CURVE,)),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
