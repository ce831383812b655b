"""Fit rules: overfitting (high variance) and underfitting (high bias).

Two sources, in order of preference:

1. Errors — ``train_error``/``val_error``, or 1 − ``train_acc``/``val_acc`` (accuracies logged in percent,
   i.e. with values above 1, are divided by 100). The standard bias/variance analysis: avoidable bias =
   train error − baseline error (human-level/Bayes; 0 when not given), variance = validation error − train
   error; verdicts high bias, high variance, both, neither.
2. Loss curves — validation loss rising from its minimum while the training loss keeps falling is
   overfitting (the best evaluation is the early-stopping point); a training loss that stays flat and high
   with train ≈ validation is underfitting. "High" needs a scale: a loss with no accuracy and no baseline has
   none, except for classifiers whose chance-level cross-entropy log(C) is known from the final layer's
   outputs C; without a scale the rule says "not evaluated" rather than guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TypedDict

import numpy as np

from gradscope.judge.confidence import agree, confidence, fraction_margin, mean, ratio_margin, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    Context,
    Need,
    Rule,
    RuleResult,
    current_lr,
    early_count,
    falling_trend,
    finite_series,
    fmt_num,
    fmt_steps,
    head_outputs,
    is_adaptive,
    is_classifier,
    nanmedian,
    optimizer_hparam,
    optimizer_name,
    tail_slice,
    weighted_layers,
)
from gradscope.judge.rules._fixes import dropout_fix, sig, width_fix
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run


class Verdict(str, Enum):
    HIGH_BIAS = "high bias"
    HIGH_VARIANCE = "high variance"
    BOTH = "high bias and high variance"
    NEITHER = "neither"


@dataclass(frozen=True)
class BiasVariance:
    train_error: float
    val_error: float
    baseline_error: float
    avoidable_bias: float
    variance: float
    verdict: Verdict

    @property
    def high_bias(self) -> bool:
        return self.verdict in (Verdict.HIGH_BIAS, Verdict.BOTH)

    @property
    def high_variance(self) -> bool:
        return self.verdict in (Verdict.HIGH_VARIANCE, Verdict.BOTH)


def bias_variance(train_error: float, val_error: float, baseline_error: float | None = None,
                  thresholds: Thresholds | None = None) -> BiasVariance:
    """The standard analysis: avoidable bias = train − baseline, variance = validation − train.

    >>> bias_variance(0.01, 0.11, 0.005).verdict.value
    'high variance'
    """
    th = thresholds or Thresholds()
    base = 0.0 if baseline_error is None else float(baseline_error)
    bias = train_error - base
    var = val_error - train_error
    hb = bias > th.avoidable_bias
    hv = var > th.variance and var >= th.variance_relative * val_error
    verdict = Verdict.BOTH if hb and hv else Verdict.HIGH_BIAS if hb else Verdict.HIGH_VARIANCE if hv \
        else Verdict.NEITHER
    return BiasVariance(train_error, val_error, base, bias, var, verdict)


def error_series(run: Run, split: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(steps, error in 0..1, source name) for "train"/"val" from *_error or 1 − *_acc."""
    for key, is_acc in ((f"{split}_error", False), (f"{split}_acc", True)):
        st, v = finite_series(run.metrics.get(key))
        if v.size:
            if np.nanmax(np.abs(v)) > 1.0:     # logged in percent
                v = v / 100.0
            return st, (1.0 - v if is_acc else v), key
    return None


def _final(v: np.ndarray) -> float:
    return float(v[-1])


def chance_loss(run: Run, th: Thresholds | None = None) -> float | None:
    """log(C) for a classifier head with C ≥ 2 outputs (the last weighted layer's fan_out), else None. A head
    with several outputs is a classifier only with evidence (``is_classifier``: an accuracy logged, or a first
    loss near log(C)); a VAE decoder or a multi-target regressor has no chance level."""
    c = head_outputs(run)
    if c is None or c < 2 or not is_classifier(run, th or Thresholds()):
        return None
    return math.log(c)


def chance_error(run: Run) -> float | None:
    """1 − 1/C for a classifier head with C outputs (a single output is a binary classifier, C = 2)."""
    w = weighted_layers(run)
    if not w:
        return None
    head = run.layers[w[-1][0]]
    if head.type.lower() != "linear" or not head.fan_out:
        return None
    return 1.0 - 1.0 / max(2, head.fan_out)


def _value_at(steps: np.ndarray, values: np.ndarray, lo: float, hi: float) -> float | None:
    """Median of values logged in (lo, hi]; else the nearest value at or before hi."""
    m = (steps > lo) & (steps <= hi)
    if m.any():
        return float(np.median(values[m]))
    before = np.nonzero(steps <= hi)[0]
    if before.size:
        return float(values[before[-1]])
    return None


def _val_error_stands_for_train(run: Run, th: Thresholds) -> float | None:
    """The relative gap between the final training and validation losses (tail medians) when it is within
    ``underfit_gap`` — then the validation error stands for the unlogged training error — else None."""
    _, tv = finite_series(run.metrics.get("train_loss"))
    _, vv = finite_series(run.metrics.get("val_loss"))
    if tv.size < th.fit_min_points or vv.size == 0:
        return None
    t_end = float(nanmedian(tv[tail_slice(tv.size, th)]))
    v_end = float(nanmedian(vv[tail_slice(vv.size, th)]))
    if not t_end > 0:
        return None
    gap = abs(v_end - t_end) / t_end
    return gap if gap <= th.underfit_gap else None


class _LossCurve(TypedDict):
    """What ``_loss_overfit`` found, typed so the message and ``steps`` need no casts; it goes into evidence."""

    best_step: int
    best_eval: int
    n_evals: int
    best_val_loss: float
    final_val_loss: float
    val_rise: float
    train_loss_at_best: float
    train_loss_final: float
    val_steps: tuple[int, int]


def _loss_overfit(run: Run, th: Thresholds) -> _LossCurve | None:
    """Evidence of val loss rising from its minimum while train loss keeps falling, or None."""
    vs, vv = finite_series(run.metrics.get("val_loss"))
    ts, tv = finite_series(run.metrics.get("train_loss"))
    if vv.size < th.fit_min_points or tv.size < th.fit_min_points:
        return None
    best = int(np.argmin(vv))
    vmin = float(vv[best])
    after = vv[best + 1:]
    if after.size < th.overfit_min_after or vmin <= 0:
        return None
    rise_last, rise_med = float(vv[-1]) / vmin - 1, float(np.median(after)) / vmin - 1
    if min(rise_last, rise_med) < th.overfit_val_rise:
        return None
    prev = float(vs[best - 1]) if best > 0 else -math.inf
    t_best = _value_at(ts, tv, prev, float(vs[best]))
    t_end = _value_at(ts, tv, float(vs[-2]), float(vs[-1]))
    if t_best is None or t_end is None or t_best <= 0 or t_end > t_best * (1 - th.overfit_train_drop):
        return None
    return {"best_step": int(vs[best]), "best_eval": best + 1, "n_evals": int(vv.size), "best_val_loss": vmin,
            "final_val_loss": float(vv[-1]), "val_rise": rise_last, "train_loss_at_best": t_best,
            "train_loss_final": t_end, "val_steps": (int(vs[0]), int(vs[-1]))}


@dataclass(frozen=True)
class BestEvaluation:
    """What ``overfitting`` hands its fixes when the validation loss turned: the evaluation where it was lowest
    (the early-stopping point), as a step, its 1-based index among ``count`` evaluations, and its loss."""

    step: int
    index: int
    count: int
    val_loss: float
    chance: float | None = None   # log(C) when validation never went below never_beat_chance_fraction of it


def _no_validation(run: Run, th: Thresholds) -> str | None:
    if error_series(run, "val") is None and finite_series(run.metrics.get("val_loss"))[1].size == 0:
        return "no validation loss or accuracy logged"
    return None


def _no_training_curve(run: Run, th: Thresholds) -> str | None:
    if error_series(run, "train") is None and finite_series(run.metrics.get("train_loss"))[1].size < th.fit_min_points:
        return "no training loss or accuracy logged"
    return None


VALIDATION = Need("a validation loss or accuracy (``val_loss``, ``val_acc`` or ``val_error``)", _no_validation)
TRAINING_CURVE = Need("a training accuracy or error, or at least ``fit_min_points`` training losses",
                      _no_training_curve)


def overfitting(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Overfitting (high variance): the model fits the training set much better than unseen data.

    Symptom: training error keeps falling, validation error stalls or rises; a growing train/validation gap.

    Detected when variance = validation error − train error exceeds ``variance`` and is at least
    ``variance_relative`` of the validation error (errors from
    ``*_error`` or 1 − ``*_acc``, final values), or when the validation loss rose at least
    ``overfit_val_rise`` above its minimum (last value and median after the minimum, with at least
    ``overfit_min_after`` evaluations after it) while the training loss fell by ``overfit_train_drop`` or
    more after the best evaluation. Not evaluated without a validation loss or accuracy.

    Why it matters: past the validation minimum further training memorizes the training sample; the model
    you would ship is worse than the one you had at the best evaluation.

    When the validation loss never went below ``never_beat_chance_fraction`` × the chance-level loss log(C)
    (a classifier, see ``is_classifier``) while the model fits the training set, the finding says so and the
    first fix is to check the labels and the split: the best evaluation is an untrained model.

    Confidence: ``confidence_floor`` + (1 − floor) × the errors and the loss curve taken as agreeing signals,
    1 − (1 − e)(1 − c): e = 1 − ``variance`` / variance when the errors show high variance (else 0); c = the mean
    of the rise's margin 1 − ``overfit_val_rise`` / rise (the smaller of the last value's and the median's) and
    the support, the Wilson lower bound (``confidence_support_level``) of the share of evaluations after the
    best that sit ``overfit_val_rise`` above it (else 0).

    Fixes: early stopping at the best evaluation; weight decay / dropout; more data or augmentation;
    a smaller model.
    """
    code = Code.OVERFITTING
    tr, va = error_series(run, "train"), error_series(run, "val")
    has_val_loss = finite_series(run.metrics.get("val_loss"))[1].size > 0
    curve = _loss_overfit(run, th)
    bv = None
    if tr is not None and va is not None:
        bv = bias_variance(_final(tr[1]), _final(va[1]), ctx.baseline_error, th)
    if bv is None and curve is None:
        if not finite_series(run.metrics.get("train_loss"))[1].size and tr is None:
            return NotEvaluated(code, "no training loss or accuracy logged to compare the validation curve with")
        if has_val_loss and finite_series(run.metrics.get("val_loss"))[1].size < th.fit_min_points:
            return NotEvaluated(code, f"fewer than {th.fit_min_points} validation evaluations")
        return []
    parts: list[str] = []
    evidence: dict[str, object] = {}
    severity: Severity | None = None
    steps: tuple[int, int] | None = None
    if bv is not None:
        evidence.update({"train_error": bv.train_error, "val_error": bv.val_error, "variance": bv.variance,
                         "avoidable_bias": bv.avoidable_bias, "baseline_error": bv.baseline_error,
                         "verdict": bv.verdict.value, "threshold": th.variance})
        if bv.high_variance:
            severity = Severity.WARNING
            parts.append(f"{bv.verdict.value}: validation error {100 * bv.val_error:.1f}% vs train "
                         f"{100 * bv.train_error:.1f}% (variance {100 * bv.variance:.1f} points, threshold "
                         f"{100 * th.variance:.1f})")
            if tr is not None and va is not None:   # always, when bv is set; the check narrows the types
                steps = (int(min(tr[0][-1], va[0][-1])), int(max(tr[0][-1], va[0][-1])))
    chance = chance_loss(run, th)
    at_chance = (curve is not None and chance is not None
                 and curve["best_val_loss"] >= th.never_beat_chance_fraction * chance)
    if curve is not None:
        evidence.update(curve)
        evidence["best_step"] = curve["best_step"]
        # When accuracies say variance is fine, a rising validation loss alone is an early sign (info).
        severity = severity or (Severity.INFO if bv is not None else Severity.WARNING)
        parts.append(f"validation loss lowest at step {curve['best_step']} (evaluation {curve['best_eval']} of "
                     f"{curve['n_evals']}, {fmt_num(curve['best_val_loss'])}), then rose to "
                     f"{fmt_num(curve['final_val_loss'])} (+{100 * curve['val_rise']:.0f}%, threshold "
                     f"+{100 * th.overfit_val_rise:.0f}%) while training loss fell from "
                     f"{fmt_num(curve['train_loss_at_best'])} to {fmt_num(curve['train_loss_final'])}")
        steps = curve["val_steps"]
        if at_chance and chance is not None:
            severity = Severity.WARNING
            evidence["chance_loss"] = chance
            parts.append(f"validation loss never went below the chance-level loss log(C) = {fmt_num(chance)} (best "
                         f"{fmt_num(curve['best_val_loss'])}, ≥ {100 * th.never_beat_chance_fraction:.0f}% of it): "
                         f"the model memorizes the training set and learned nothing that transfers — check the "
                         f"labels and the train/validation split before tuning anything")
    if severity is None:
        return []
    s_err = ratio_margin(bv.variance, th.variance) if bv is not None and bv.high_variance else 0.0
    s_curve = 0.0
    if curve is not None:
        vv = finite_series(run.metrics.get("val_loss"))[1]
        vmin, after = curve["best_val_loss"], vv[curve["best_eval"]:]
        risen = after / vmin - 1.0 >= th.overfit_val_rise
        rise = min(curve["val_rise"], float(np.median(after)) / vmin - 1.0)
        s_curve = mean(ratio_margin(rise, th.overfit_val_rise),
                       support(int(risen.sum()), int(after.size), th.confidence_support_level))
    conf = confidence(agree(s_err, s_curve), th.confidence_floor)
    if bv is not None and ctx.baseline_error is None:
        evidence["note"] = "no baseline error given; variance does not need one"
    detail = None if curve is None else BestEvaluation(step=curve["best_step"], index=curve["best_eval"],
                                                       count=curve["n_evals"], val_loss=curve["best_val_loss"],
                                                       chance=chance if at_chance else None)
    return [Finding(code, severity, "Overfitting (high variance)", "; ".join(parts), steps=steps,
                    evidence=evidence, confidence=conf, detail=detail)]


def end_trend(run: Run, th: Thresholds) -> dict[str, float | bool] | None:
    """Is the training loss still falling at the end? Over the second half of the logged ``train_loss``
    values (all of them when that half has fewer than ``lr_trend_min_points``): the Theil–Sen slope with its
    ``lr_trend_confidence`` interval (``scipy.stats.theilslopes``) and a one-sided Mann–Kendall test; it is
    still falling when the whole interval is below zero and p < ``lr_trend_p`` (Sen 1968; Mann 1945).
    Returns {"falling", "slope", "slope_low", "slope_high", "p", "points"}; None with too few values."""
    st, v = finite_series(run.metrics.get("train_loss"))
    half = v.size // 2
    if v.size - half >= th.lr_trend_min_points:
        st, v = st[half:], v[half:]
    if v.size < th.lr_trend_min_points or np.ptp(st) <= 0:
        return None
    t = falling_trend(st, v, th)
    return {"falling": bool(t["slope_high"] < 0 and t["p"] < th.lr_trend_p), "slope": t["slope"],
            "slope_low": t["slope_low"], "slope_high": t["slope_high"], "p": t["p"], "points": int(v.size)}


def _trend_text(trend: dict[str, float | bool], th: Thresholds) -> str:
    return (f"Theil–Sen slope {fmt_num(1000 * float(trend['slope']))} per 1000 steps, "
            f"{100 * th.lr_trend_confidence:.0f}% interval {fmt_num(1000 * float(trend['slope_low']))} to "
            f"{fmt_num(1000 * float(trend['slope_high']))} over the last {int(trend['points'])} logged values")


def underfitting(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Underfitting (high bias): the model does not fit even the training data.

    Symptom: training error stays high; training and validation curves plateau close together.

    Detected when avoidable bias = train error − baseline error exceeds ``avoidable_bias`` (baseline from
    ``--baseline-error``, else 0: then the finding is an info unless the train error is also at least
    ``bias_chance_fraction`` of the chance-level error 1 − 1/C, or above ``avoidable_bias_no_baseline`` when C
    is unknown, since some tasks cannot be learned to zero error). Without errors, from
    the losses: the training loss improved by less than ``underfit_min_improvement`` from its early to its
    final part, sits at ``underfit_chance_fraction`` × log(C) or more for a classifier with C outputs, and
    train ≈ validation within ``underfit_gap`` when a validation loss is logged. A flat loss with no scale
    (no accuracy, no classifier head) is "not evaluated".

    Why it matters: more epochs of the same setup will not help much; the model or the optimization is the
    bottleneck.

    When only the validation accuracy is logged (no ``train_acc``) and the final training and validation losses
    are within ``underfit_gap`` of each other, the validation error stands for the training error. A head with
    C ≥ 2 outputs counts as a classifier (chance level log(C)) only with evidence (``classifier_start_band``).

    Confidence: ``confidence_floor`` + (1 − floor) × a strength. From errors: the mean of the margin
    1 − ``avoidable_bias`` / avoidable bias, the support — the Wilson lower bound (``confidence_support_level``) of
    the share of the last ``tail_fraction`` of error values whose avoidable bias is above ``avoidable_bias`` — and
    the anchor: 1 with a baseline error given, else train error / chance-level error 1 − 1/C (0 when C is
    unknown). From losses: the training loss and the validation loss taken as agreeing signals, 1 − (1 − t)(1 − v):
    t = the mean of the flatness (``underfit_min_improvement`` − improvement) / ``underfit_min_improvement``, the
    level (end / log(C) − ``underfit_chance_fraction``) / (1 − ``underfit_chance_fraction``) and the support of
    the tail's losses at or above ``underfit_chance_fraction`` × log(C); v = the mean of the validation loss's
    level and 1 − gap / ``underfit_gap`` (0 without a validation loss).

    Fixes: a bigger or deeper model; training longer; a better-tuned learning rate; less regularization.
    Training longer leads when the training loss is still falling at the end (``end_trend``: Theil–Sen slope
    interval below zero and a one-sided Mann–Kendall p below ``lr_trend_p`` over the second half of the curve),
    and is demoted with that reason when the loss has levelled off. Widths are counted in units: channels of a
    convolution, ``hidden_size`` of a recurrent layer (not its 3×/4× gate rows), ``d_model`` or the feed-forward
    width of a transformer (never a fused qkv projection, whose width is tied to the number of heads); a hidden
    layer narrower than the model's outputs is the one widened, past them (a bottleneck), and a linear model
    gets a hidden layer.
    """
    code = Code.UNDERFITTING
    tr, va = error_series(run, "train"), error_series(run, "val")
    proxy_gap = _val_error_stands_for_train(run, th) if tr is None and va is not None else None
    if proxy_gap is not None and va is not None:
        # No training accuracy, but train ≈ validation loss: the validation error is the training error's
        # estimate (the same model, the same loss level on both splits).
        tr = va
    if tr is not None:
        train_err = _final(tr[1])
        val_err = _final(va[1]) if va is not None else train_err
        bv = bias_variance(train_err, val_err, ctx.baseline_error, th)
        if not bv.high_bias:
            return []
        known = ctx.baseline_error is not None
        chance_err = chance_error(run)
        if known:
            severity = Severity.WARNING
        elif chance_err is not None:
            severity = Severity.WARNING if train_err >= th.bias_chance_fraction * chance_err else Severity.INFO
        else:
            severity = Severity.WARNING if train_err > th.avoidable_bias_no_baseline else Severity.INFO
        base_txt = (f"baseline {100 * bv.baseline_error:.1f}%" if known else "no baseline given (assumed 0%)")
        msg = (f"{bv.verdict.value if va is not None else 'high bias'}: train error {100 * train_err:.1f}% "
               f"({base_txt}; avoidable bias {100 * bv.avoidable_bias:.1f} points, threshold "
               f"{100 * th.avoidable_bias:.1f})")
        if va is not None:
            msg += f", validation error {100 * val_err:.1f}%"
        if proxy_gap is not None:
            msg = (f"high bias: validation error {100 * val_err:.1f}% with the training loss within "
                   f"{100 * proxy_gap:.0f}% of the validation loss (threshold {100 * th.underfit_gap:.0f}%; no "
                   f"training accuracy logged), so the training error is about as high ({base_txt}; avoidable "
                   f"bias ≈ {100 * bv.avoidable_bias:.1f} points, threshold {100 * th.avoidable_bias:.1f})")
        steps = (int(tr[0][-1]), int(tr[0][-1]))
        evidence: dict[str, object] = {"train_error": train_err, "val_error": val_err if va is not None else None,
                    "avoidable_bias": bv.avoidable_bias, "variance": bv.variance if va is not None else None,
                    "baseline_error": bv.baseline_error if known else None, "verdict": bv.verdict.value,
                    "threshold": th.avoidable_bias}
        tail_err = tr[1][tail_slice(tr[1].size, th)]
        anchor = 1.0 if known else train_err / chance_err if chance_err else 0.0
        conf = confidence(mean(ratio_margin(bv.avoidable_bias, th.avoidable_bias),
                               support(int((tail_err - bv.baseline_error > th.avoidable_bias).sum()),
                                       int(tail_err.size), th.confidence_support_level), anchor),
                          th.confidence_floor)
        trend = end_trend(run, th)
        evidence["end_trend"] = trend
        if trend is not None and trend["falling"]:
            msg += f"; the training loss is still falling at the end ({_trend_text(trend, th)}): train longer first"
        return [Finding(code, severity, "Underfitting (high bias)", msg, steps=steps, evidence=evidence,
                        confidence=conf)]
    ts, tv = finite_series(run.metrics.get("train_loss"))
    k = early_count(tv.size, th)
    start = float(nanmedian(tv[:k]))
    tail = tail_slice(tv.size, th)
    end = float(nanmedian(tv[tail]))
    if not (start > 0):
        return NotEvaluated(code, "training loss is not positive; cannot judge its relative improvement")
    improvement = 1 - end / start
    if improvement >= th.underfit_min_improvement:
        return []
    _vs, vv = finite_series(run.metrics.get("val_loss"))
    gap = None
    v_end = math.nan
    if vv.size:
        v_end = float(nanmedian(vv[tail_slice(vv.size, th)]))
        gap = abs(v_end - end) / end if end > 0 else None
        if gap is None or gap > th.underfit_gap:
            return []      # flat train loss but validation far from it: not the underfitting picture
    c = head_outputs(run)
    if c is not None and c >= 2 and end < th.underfit_chance_fraction * math.log(c):
        return []      # low against log(C): not underfitting whether it is a classifier or not
    chance = chance_loss(run, th)
    if chance is None:
        why = (f" (the head has {c} outputs, but no accuracy is logged and the first loss is not near log({c}): "
               f"read as a regression)" if c is not None and c >= 2 else "")
        return NotEvaluated(code, f"training loss is flat but nothing tells whether it is high{why}: log "
                                  f"train_acc/val_acc (or train_error) or pass a baseline error")
    if end < th.underfit_chance_fraction * chance:
        return []
    steps = (int(ts[tail][0]), int(ts[-1]))
    msg = (f"training loss flat at {fmt_num(end)} over {fmt_steps(steps)} ({100 * improvement:.0f}% below its "
           f"start {fmt_num(start)}, threshold {100 * th.underfit_min_improvement:.0f}%), near the chance-level "
           f"loss log(C) = {fmt_num(chance)} (≥ {100 * th.underfit_chance_fraction:.0f}% of it)")
    if gap is not None:
        msg += f"; validation loss within {100 * gap:.0f}% of it"
    evidence2: dict[str, object] = {"train_loss_start": start, "train_loss_end": end, "improvement": improvement,
                "chance_loss": chance, "train_val_gap": gap, "threshold": th.underfit_min_improvement,
                "end_trend": end_trend(run, th)}
    high = th.underfit_chance_fraction
    s_train = mean(fraction_margin(improvement, th.underfit_min_improvement, 0.0),
                   fraction_margin(end / chance, high),
                   support(int((tv[tail] >= high * chance).sum()), int(tv[tail].size), th.confidence_support_level))
    s_val = mean(fraction_margin(v_end / chance, high), 1.0 - gap / th.underfit_gap) if gap is not None else 0.0
    return [Finding(code, Severity.WARNING, "Underfitting (high bias)", msg, steps=steps, evidence=evidence2,
                    confidence=confidence(agree(s_train, s_val), th.confidence_floor))]


# ---------------------------------------------------------------- fixes

def _early_stopping_code(patience: int, note: str) -> str:
    return "\n".join([
        f"best_val, bad_evals, patience = float(\"inf\"), 0, {patience}",
        "",
        "",
        "def stop_early(val_loss):",
        "    # call after each validation: keeps the best weights in best.pt, True when it is time to stop",
        f"    # {note}",
        "    global best_val, bad_evals",
        "    if val_loss < best_val:",
        "        best_val, bad_evals = val_loss, 0",
        "        torch.save(model.state_dict(), \"best.pt\")",
        "    else:",
        "        bad_evals += 1",
        "    return bad_evals >= patience",
    ])


def overfitting_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    fixes: list[Fix | None] = []
    best = f.detail if isinstance(f.detail, BestEvaluation) else None
    patience = th.overfit_min_after + 1
    if best is not None and best.chance is not None:
        # The best checkpoint is an untrained model: stopping early keeps nothing worth having.
        fixes.append(Fix(FixKind.DATA, f"Check the labels and the train/validation split: validation loss never "
                         f"beat chance (best {best.val_loss:.4g} vs log(C) = {best.chance:.4g}) while the training "
                         f"loss fell, so what the model learned does not transfer (shuffled or misaligned labels, a "
                         f"split by a feature the labels depend on, a different preprocessing for validation)",
                         "# sanity checks, before any tuning:\n"
                         "# 1. a few (input, label) pairs from the training set, shown side by side, look right\n"
                         "# 2. validation data goes through the same preprocessing as training data\n"
                         "# 3. the label distribution of both splits is similar"))
    elif best is not None:
        fixes.append(Fix(FixKind.EARLY_STOPPING,
                         f"Stop at step {best.step} (evaluation {best.index} of {best.count}), where validation loss "
                         f"was lowest ({best.val_loss:.4g}); keep that checkpoint",
                         _early_stopping_code(patience, f"this run's validation loss was lowest at step {best.step}")))
    else:
        fixes.append(Fix(FixKind.EARLY_STOPPING, "Keep the checkpoint with the best validation score and stop "
                         "when it has not improved for a few evaluations",
                         _early_stopping_code(patience, "pass 1 - accuracy when you track accuracy")))
    wd = optimizer_hparam(run, "weight_decay")
    adaptive = is_adaptive(run)
    if wd is not None and wd > 0:
        new_wd = wd * th.fix_weight_decay_step_up
        wd_txt = f"Raise weight decay from {sig(wd, 2)} to {sig(new_wd, 1)}"
    else:
        new_wd = th.fix_weight_decay_adamw if adaptive else th.fix_weight_decay_sgd
        wd_txt = f"Add weight decay {sig(new_wd, 1)} (L2)"
    lr = current_lr(run)
    if adaptive and (optimizer_name(run) or "").lower() != "adamw":
        # Adam's weight_decay is an L2 term that the adaptive step rescales; AdamW decouples it.
        lr_txt = f"lr={sig(lr, 2)}, " if lr is not None else ""
        code = (f"optimizer = torch.optim.AdamW(model.parameters(), {lr_txt}weight_decay={sig(new_wd, 1)})  "
                f"# decoupled weight decay")
    else:
        code = f"for group in optimizer.param_groups:\n    group[\"weight_decay\"] = {sig(new_wd, 1)}"
    fixes.append(Fix(FixKind.REGULARIZATION, f"{wd_txt} to shrink the weights towards simpler functions", code))
    fixes.append(dropout_fix(run, th))
    conv = any(la.type.lower().startswith("conv2d") for la in run.layers)
    if conv:
        fixes.append(Fix(FixKind.DATA, "Use more training data or augment it (random shifts; flips where a mirror "
                         "image keeps its label)",
                         "from torchvision import transforms\n\n"
                         "augment = transforms.RandomAffine(degrees=0, translate=(0.1, 0.1))  # random shifts\n"
                         "# add transforms.RandomHorizontalFlip() where a mirror image keeps its label"))
    else:
        fixes.append(Fix(FixKind.DATA, "Use more training data or augment it", ""))
    fixes.append(width_fix(run, th, grow=False))
    return fixes


def underfitting_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    fixes: list[Fix | None] = []
    trend = f.evidence.get("end_trend")
    trend = trend if isinstance(trend, dict) else None
    if trend is not None and trend.get("falling"):
        fixes.append(Fix(FixKind.TRAIN_LONGER, f"Train longer (more epochs) before changing the model: the training "
                         f"loss is still falling at the end ({_trend_text(trend, th)})", "num_epochs *= 2"))
    fixes.append(width_fix(run, th, grow=True))
    if trend is None:
        fixes.append(Fix(FixKind.TRAIN_LONGER, "Train longer (more epochs) and check that the training loss is "
                         "still falling at the end", "num_epochs *= 2"))
    demoted = None
    if trend is not None and not trend.get("falling"):
        demoted = Fix(FixKind.TRAIN_LONGER, f"Train longer only together with another change: the training loss "
                      f"has levelled off at the end ({_trend_text(trend, th)}, not significantly below zero), so "
                      f"more epochs of the same setup help little", "num_epochs *= 2")
    lr = current_lr(run)
    was = f" (was {sig(lr, 2)})" if lr is not None else ""
    fixes.append(Fix(FixKind.LEARNING_RATE, f"Tune the learning rate{was} with a range test (a few values on a "
                     f"log scale around it): too low and the loss barely moves", ""))
    fixes.append(demoted)
    return fixes


RULES = (
    Rule(Code.OVERFITTING, overfitting, overfitting_fixes, "fitting", needs=(VALIDATION,)),
    Rule(Code.UNDERFITTING, underfitting, underfitting_fixes, "fitting", needs=(TRAINING_CURVE,)),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
