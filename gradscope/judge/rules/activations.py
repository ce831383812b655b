"""Activation rules: dead ReLU units and saturated sigmoid/tanh units.

Both are judged per unit (feature of a Linear, channel of a Conv), never per element: healthy ReLU nets are
about half zeros elementwise, and an elementwise criterion flags them (the write side counts a unit dead only
when it was never positive for any sample over ``header.dead_window`` recorded steps).
"""

from __future__ import annotations

import numpy as np

from gradscope.judge.confidence import confidence, fraction_margin, mean, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    STEPS,
    Context,
    Rule,
    RuleResult,
    finite_rows,
    first_divergent_step,
    fmt_steps,
    label,
    layer_stat,
    nanmedian,
    output_layer,
    pct,
    safe_div,
    stat,
    step_range,
    tail_slice,
)
from gradscope.judge.rules._fixes import init_fix, list_names, lr_fix, named, norm_fix, swap_activation
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import DYING_ACTIVATIONS, SATURATING_ACTIVATIONS


def _unit_fraction_rule(run: Run, th: Thresholds, code: Code, field: str, acts: frozenset[str],
                        warn_at: float, error_at: float, skip_head: bool,
                        describe: str) -> RuleResult:
    """Shared shape of dead/saturated: per layer, median fraction of units over the tail of training."""
    cand = [i for i, la in enumerate(run.layers) if (la.act or "").lower() in acts]
    head = output_layer(run)
    if skip_head:
        # A sigmoid on the output of a well-trained binary classifier is saturated by design (confident
        # predictions); it is the hidden layers whose saturation blocks the gradient.
        cand = [i for i in cand if i != head or len(run.layers) == 1]
    if not cand:
        names = "/".join(sorted(acts))
        return NotEvaluated(code, f"no watched hidden layer is followed by {names}")
    num, units = stat(run, "layer", field), stat(run, "layer", "units")
    assert num is not None and units is not None   # the rule's needs
    frac_all = safe_div(num[:, cand], units[:, cand])
    # Rows at/after divergence describe NaN weights (a NaN is never positive: every unit would look dead),
    # and single rows with non-finite activations (an AMP overflow the scaler skipped) say nothing either.
    keep = finite_rows(run)
    nf = stat(run, "layer", "nonfinite")
    if nf is not None:
        keep &= ~(np.nan_to_num(nf[:, cand], nan=0.0) > 0).any(axis=1)
    diverged = first_divergent_step(run)
    if keep.sum() < th.min_recorded_steps:
        return NotEvaluated(code, f"only {int(keep.sum())} recorded step(s) before the run diverged at step "
                                  f"{diverged}; activations after it are NaN/Inf" if diverged is not None else
                                  f"only {int(keep.sum())} recorded step(s) with finite activations")
    frac_all = np.where(keep[:, None], frac_all, np.nan)
    start = 0
    if code is Code.DEAD_RELU and run.header is not None:
        # The window is full only after dead_window recorded steps; before that "dead" means "inactive so far".
        start = min(max(run.header.dead_window - 1, 0), max(int(keep.sum()) - 1, 0))
    # Judge the rows before divergence only: the tail of training is the tail of the finite part.
    rows = np.nonzero(keep)[0][start:]
    frac = frac_all[rows]
    steps_all = run.steps[rows]
    if np.isfinite(frac).sum() == 0:
        return NotEvaluated(code, f"no finite '{field}' counts on the watched layers")
    tail = tail_slice(frac.shape[0], th)
    med = np.asarray(nanmedian(frac[tail], axis=0))
    findings: list[Finding] = []
    tail_steps = steps_all[tail]
    steps = step_range(tail_steps)
    dmean = stat(run, "layer", "dmean") if code is Code.SATURATION else None
    # Support for the confidence: per layer, the tail steps on which the finding's condition held (in one pass).
    ftail = frac[tail]
    dtail = dmean[rows][tail][:, cand] if dmean is not None else np.full_like(ftail, np.nan)
    with np.errstate(invalid="ignore"):
        held = (ftail >= warn_at) | (dtail < th.saturation_dmean)
    n_held, n_judged = held.sum(axis=0), (np.isfinite(ftail) | np.isfinite(dtail)).sum(axis=0)
    for j, i in enumerate(cand):
        m = float(med[j])
        la = run.layers[i]
        n_units = float(nanmedian(units[:, i]))
        units_txt = str(int(n_units)) if np.isfinite(n_units) else "?"
        dm = float(nanmedian(dmean[rows][tail, i])) if dmean is not None else float("nan")
        by_derivative = np.isfinite(dm) and dm < th.saturation_dmean
        if not (np.isfinite(m) and m >= warn_at) and not by_derivative:
            continue
        if np.isfinite(m) and m >= warn_at:
            severity = Severity.ERROR if m >= error_at else Severity.WARNING
            msg = (f"{label(la.name)}: {pct(m)} of {units_txt} units {describe} over {fmt_steps(steps)} "
                   f"(median; threshold {pct(warn_at)})")
        else:
            severity = Severity.WARNING
            msg = (f"{label(la.name)}: mean {la.act} derivative {pct(dm)} of its maximum over {fmt_steps(steps)} "
                   f"(median; threshold {pct(th.saturation_dmean)}); {pct(m) if np.isfinite(m) else '?'} of "
                   f"{units_txt} units saturated on their own")
        last = frac[:, j][np.isfinite(frac[:, j])]
        evidence: dict[str, object] = {
            "fraction": m, "final_fraction": float(last[-1]) if last.size else None, "units": n_units,
            "activation": la.act, "threshold": warn_at, "layer_type": la.type,
        }
        if code is Code.SATURATION:
            evidence["mean_derivative"] = dm
            evidence["derivative_threshold"] = th.saturation_dmean
        if code is Code.DEAD_RELU and run.header is not None:
            evidence["dead_window"] = run.header.dead_window
        if diverged is not None:
            evidence["judged_before_divergence_at"] = diverged
        findings.append(Finding(code, severity, _TITLES[code], msg, layers=(la.name,), steps=steps,
                                evidence=evidence,
                                confidence=confidence(mean(
                                    support(int(n_held[j]), int(n_judged[j]), th.confidence_support_level),
                                    max(fraction_margin(m, warn_at),
                                        fraction_margin(dm, th.saturation_dmean, 0.0) if by_derivative else 0.0)),
                                    th.confidence_floor)))
    return findings


_TITLES = {Code.DEAD_RELU: "Dead ReLU units", Code.SATURATION: "Saturated activations"}


def dead_relu(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Dead ReLU units: units that output zero for every input, so they never learn again.

    Symptom: a ReLU layer whose units stay at zero; training stalls or capacity shrinks; often after a
    learning-rate spike or with large negative biases.

    Detected when, for a layer followed by ReLU/ReLU6, the fraction of units never positive over the last
    ``header.dead_window`` recorded steps (median over the last ``tail_fraction`` of training) is at least
    ``dead_fraction`` (error at ``dead_fraction_error``). Leaky/ELU/GELU-like activations are not judged:
    their units keep a gradient for negative inputs. Only recorded steps before the run's first non-finite
    value count: a NaN activation is never positive, so after divergence every unit would look dead.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower bound
    (``confidence_support_level``) of the share of judged steps whose dead fraction was at least
    ``dead_fraction`` — and the margin (median − ``dead_fraction``) / (1 − ``dead_fraction``).

    Why it matters: a ReLU unit whose pre-activation is negative for every input gets zero gradient forever
    (its weights never change), so a dead layer has lost that share of its capacity for good.

    Fixes: a non-dying activation (``nn.LeakyReLU(0.01)``, ELU); He initialization with zero biases; a lower
    learning rate; BatchNorm before the activation.
    """
    return _unit_fraction_rule(run, th, Code.DEAD_RELU, "dead", DYING_ACTIVATIONS, th.dead_fraction,
                               th.dead_fraction_error, skip_head=False, describe="never fired")


def saturation(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Saturated activations: sigmoid/tanh units pinned at their flat ends, passing almost no gradient.

    Symptom: hidden activations at ±1 (tanh) or 0/1 (sigmoid); gradients below them vanish; learning slows.

    Detected when, for a hidden layer followed by a saturating activation (sigmoid, tanh, hardtanh, softsign,
    hardsigmoid), the fraction of units whose mean normalized derivative is below
    ``header.saturation_derivative`` (median over the last ``tail_fraction`` of training) is at least
    ``saturation_fraction`` (error at ``saturation_fraction_error``), or the layer's mean normalized derivative
    is below ``saturation_dmean`` (most inputs land in the flat tails even if no single unit is pinned on
    every sample). The output layer is not judged: a
    confident classifier's output sigmoid is saturated by design. Only recorded steps before the run's first
    non-finite value count.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower bound
    (``confidence_support_level``) of the share of judged steps on which the saturated fraction reached
    ``saturation_fraction`` or the mean derivative was below ``saturation_dmean`` — and the margin, the larger of
    (median fraction − ``saturation_fraction``) / (1 − ``saturation_fraction``) and, when the derivative
    criterion holds, (``saturation_dmean`` − median derivative) / ``saturation_dmean``.

    Why it matters: tanh'(z) = 1 − tanh²(z) and σ'(z) = σ(z)(1 − σ(z)) go to 0 for large |z|, so the
    gradient through a saturated unit is (almost) zero and the layers below it stop learning.

    Fixes: Glorot initialization (smaller pre-activations); normalization before the activation; a
    ReLU-family activation in hidden layers; standardized inputs; a lower learning rate.
    """
    return _unit_fraction_rule(run, th, Code.SATURATION, "saturated", SATURATING_ACTIVATIONS,
                               th.saturation_fraction, th.saturation_fraction_error, skip_head=True,
                               describe="saturated (derivative below threshold)")


# ---------------------------------------------------------------- fixes

def dead_relu_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    acts = ({(la.act or "").lower() for la in named(run, f.layers, th)} & DYING_ACTIVATIONS) or {"relu"}
    return [
        Fix(FixKind.ACTIVATION, f"Replace the ReLU after {list_names(list(f.layers), th)} with LeakyReLU: it keeps "
            f"a small gradient for negative inputs, so units can recover",
            swap_activation(acts, "nn.LeakyReLU(0.01)", keep_output=False)),
        init_fix(run, f.layers, "He init with zero biases starts half of the units active", th, act="relu"),
        lr_fix(run, th.fix_lr_backoff, "large updates push units into the never-active region"),
        norm_fix(run, f.layers, "keeps each unit's pre-activation centred, so it fires on part of the batch", th),
    ]


def saturation_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    las = named(run, f.layers, th)
    acts = sorted({(la.act or "").lower() for la in las})
    return [
        init_fix(run, f.layers, "Glorot init keeps pre-activations in the linear range of " + "/".join(acts), th),
        norm_fix(run, f.layers, "keeps pre-activations near 0, where the derivative is largest", th),
        Fix(FixKind.ACTIVATION, f"Use ReLU (or GELU) in hidden layers instead of the {'/'.join(acts)} after "
            f"{list_names([la.name for la in las], th)}: it does not saturate for positive inputs",
            swap_activation(set(acts) & SATURATING_ACTIVATIONS, "nn.ReLU()", keep_output=True)),
        lr_fix(run, th.fix_lr_backoff, "large updates drive pre-activations into the flat tails"),
    ]


RULES = (
    Rule(Code.DEAD_RELU, dead_relu, dead_relu_fixes, "activations",
         needs=(LOG, STEPS, layer_stat("dead"), layer_stat("units"))),
    Rule(Code.SATURATION, saturation, saturation_fixes, "activations",
         needs=(LOG, STEPS, layer_stat("saturated"), layer_stat("units"))),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
