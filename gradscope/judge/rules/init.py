"""Initialization rule: weight variance at init far from what the following activation needs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradscope.judge.confidence import agree, confidence, fraction_margin, mean, ratio_margin, support
from gradscope.judge.findings import Code, Finding, Fix, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    Context,
    Rule,
    RuleResult,
    early_count,
    finite_rows,
    finite_series,
    first_divergent_step,
    fmt_num,
    fmt_steps,
    head_outputs,
    is_classifier,
    is_weighted,
    label,
    nanmedian,
    output_layer,
    param_index,
    pct,
    safe_div,
    stat,
    weighted_layers,
)
from gradscope.judge.rules._fixes import init_fix, norm_fix
from gradscope.judge.rules.fitting import chance_loss
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import RELU_FAMILY, SATURATING_ACTIVATIONS, LayerInfo


@dataclass(frozen=True)
class InitTarget:
    scheme: str          # "he", "glorot", "lecun"
    variance: float      # the weight variance the activation needs
    nonlinearity: str    # for nn.init.calculate_gain / kaiming_normal_


@dataclass(frozen=True)
class PoorInitDetail:
    """What ``poor_init`` hands its fixes: per mis-initialized layer, the nonlinearity its scheme is for."""

    nonlinearity: dict[str, str] = field(default_factory=dict)


def init_target(la: LayerInfo) -> InitTarget | None:
    """The variance a layer's weights should have for the activation that follows it.

    He et al. 2015: 2/fan_in for the ReLU family; Klambauer et al. 2017: LeCun 1/fan_in for SELU; Glorot &
    Bengio 2010: 2/(fan_in + fan_out) for tanh, sigmoid and linear (no activation)."""
    if not la.fan_in or la.fan_in <= 0:
        return None
    act = (la.act or "").lower()
    if act == "selu":
        return InitTarget("lecun", 1.0 / la.fan_in, "selu")
    if act in RELU_FAMILY:
        return InitTarget("he", 2.0 / la.fan_in, "leaky_relu" if act == "leaky_relu" else "relu")
    fan_out = la.fan_out if la.fan_out and la.fan_out > 0 else la.fan_in
    nl = act if act in ("tanh", "sigmoid") else "linear"
    return InitTarget("glorot", 2.0 / (la.fan_in + fan_out), nl)


@dataclass(frozen=True)
class StartLoss:
    """The earliest training loss against the chance level: ``value`` is the median of ``n`` values logged over
    ``steps``, ``hits`` of them at or above ``init_loss_chance_factor`` × ``chance`` = log(``classes``)."""

    value: float
    chance: float
    classes: int
    steps: tuple[int, int]
    n: int
    hits: int
    per: str             # "step" (several values in the early window) or "log" (one value: a per-epoch mean)


def _head_classes(run: Run) -> int | None:
    """C, the output width of the model's head: the last weighted layer in forward order when it is a Linear,
    its weight its own or tied. A language model's head often shares the token embedding's weight, which the
    header lists once (under the embedding), so ``head_outputs`` — which needs the head's own weight — misses it."""
    last = [la for la in run.layers if is_weighted(la)]
    if not last or last[-1].type.lower() != "linear" or not last[-1].fan_out:
        return None
    return int(last[-1].fan_out)


def _chance_at_init(run: Run, th: Thresholds) -> tuple[float, int] | None:
    """(log C, C) when the run is known to be a classifier over C ≥ 2 classes: the chance level ``fitting`` uses
    (an accuracy logged, or a start near log C), or a language model — a head whose C outputs match the
    vocabulary of an embedding the model reads (tokens in, a distribution over the same tokens out: cross-entropy
    over the vocabulary). Anything else (a regressor, a VAE decoder) has no chance level: None."""
    chance, c = chance_loss(run, th), head_outputs(run)
    if chance is not None and c is not None:
        return chance, c
    c = _head_classes(run)
    if c is None or c < 2:
        return None
    lm = any("embedding" in la.type.lower() and la.fan_out == c for la in run.layers)
    if lm or is_classifier(run, th):
        return math.log(c), c
    return None


def start_loss(run: Run, th: Thresholds) -> StartLoss | None:
    """The earliest logged training loss of a classifier or language model, with its chance level, or None.

    The first ``early_min_steps`` values logged within the early window (``early_count`` of the run's steps,
    counted from the first logged one); a run that logs once per epoch has only its first epoch's mean there,
    which already includes the epoch's progress (it can only understate the loss at init). None without a
    chance level, without a finite training loss, or when the run diverged by then (the loss is the blow-up's)."""
    ch = _chance_at_init(run, th)
    st, v = finite_series(run.metrics.get("train_loss"))
    if ch is None or v.size == 0:
        return None
    n_steps = max(int(run.n_steps), int(st[-1]) + 1)
    first = st <= st[0] + early_count(n_steps, th) - 1
    k = min(int(first.sum()), th.early_min_steps)
    st, v = st[:k], v[:k]
    div = first_divergent_step(run)
    if div is not None and div <= int(st[-1]):
        return None
    chance, c = ch
    return StartLoss(value=float(np.median(v)), chance=chance, classes=c, steps=(int(st[0]), int(st[-1])), n=k,
                     hits=int((v >= th.init_loss_chance_factor * chance).sum()), per="step" if k > 1 else "log")


def _either_way(ratio: float, factor: float) -> float:
    """The confidence margin of a ratio that is off by more than ``factor`` either way (1 for a ratio of 0)."""
    return ratio_margin(max(ratio, 1.0 / ratio), factor) if ratio > 0 else 1.0


def poor_init(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Poor initialization: initial weight variance far from what the following activation needs — and it shows.

    Symptom: from the first steps, activations shrink or grow layer after layer, units saturate, gradients
    vanish or explode; training is slow or unstable from the start.

    Detected when a weighted layer's initial weight variance (``init_std``²) is more than ``poor_init_factor``
    away (either way) from He 2/fan_in (ReLU family), Glorot 2/(fan_in+fan_out) (tanh, sigmoid, linear) or
    LeCun 1/fan_in (SELU), *and* the early statistics show it: the activation std changes by ``signal_depth_factor``
    from the first to the last weighted layer on the early steps, or a mis-scaled layer followed by a
    saturating activation has ``saturation_fraction`` of its units saturated, or a mean normalized derivative
    below ``saturation_dmean``, on the early steps, or — for a classifier or language model over C classes — the
    earliest logged training loss (``start_loss``) is ``init_loss_chance_factor`` × the chance level log(C) or
    more, where a well-initialized model starts at ≈ log(C) (the loss alone, without a mis-scaled layer, is never
    a finding: normalization in front of every layer hides the depth signal, and GELU/softmax the saturation,
    but not the loss). Only what the init measurably does counts: other findings
    found in the same run do not. A hidden layer initialized to all-equal weights (std 0) never breaks symmetry
    and is flagged on that alone. PyTorch's default 1/(3·fan_in) lies within the factor on purpose and never
    triggers on its own.

    Why it matters: Var(z) = fan_in · Var(w) · Var(x); a per-layer factor ≠ 1 compounds exponentially with
    depth in both the forward signal and the backward gradient (Glorot & Bengio 2010; He et al. 2015).

    Fixes: re-initialize the named layers with the matching scheme (``kaiming_normal_``, ``xavier_normal_``
    with the activation's gain, LeCun normal for SELU); normalization layers make a net less sensitive to init.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of three strengths: the worst layer's margin
    1 − ``poor_init_factor`` / (its variance ratio, either way; 1 for an all-equal layer); what shows, its
    signals taken as agreeing, 1 − Π(1 − mᵢ), with margins 1 − ``signal_depth_factor`` / (the depth change,
    either way), (fraction − ``saturation_fraction``) / (1 − ``saturation_fraction``) and (``saturation_dmean``
    − derivative) / ``saturation_dmean``, and 1 − ``init_loss_chance_factor`` / (starting loss / log C); and the
    support, the Wilson lower bound (``confidence_support_level``) of the share of early steps on which one of
    the recorded signals held, or of the early loss values at or above the factor, whichever is larger (both 0
    when nothing shows).
    """
    code = Code.POOR_INIT
    pidx = param_index(run)
    w = weighted_layers(run)
    head = output_layer(run)
    checked = 0
    mis: list[tuple[int, float, InitTarget]] = []   # (layer index, variance ratio actual/target, target)
    symmetric: list[int] = []
    for li, pi in w:
        la, p = run.layers[li], run.params[pi]
        if p.init_std is None:
            continue
        tgt = init_target(la)
        if tgt is None:
            continue
        checked += 1
        if p.init_std == 0.0:
            if li != head and p.numel > 1:
                symmetric.append(li)
            continue
        q = p.init_std ** 2 / tgt.variance
        if q > th.poor_init_factor or q < 1.0 / th.poor_init_factor:
            mis.append((li, q, tgt))
    if checked == 0:
        return NotEvaluated(code, "no initial weight statistics (init_std, fan_in) for weighted layers")
    if not mis and not symmetric:
        return []
    shows: list[str] = []
    show_margins: list[float] = []      # per signal in ``shows``, how far past its threshold (confidence)
    held = np.zeros(0, dtype=bool)      # early steps on which one of those signals held (confidence)
    evidence: dict[str, object] = {}
    early_steps = None
    var = stat(run, "layer", "var")
    rows = np.nonzero(finite_rows(run))[0]   # statistics after divergence describe NaN weights
    if mis and var is not None and rows.size:
        k = early_count(rows.size, th)
        early = rows[:k]
        early_steps = (int(run.steps[early[0]]), int(run.steps[early[-1]]))
        std = np.sqrt(np.where(var[early] >= 0, var[early], np.nan))
        held = np.zeros(early.size, dtype=bool)
        wl = [li for li, _ in w]
        if len(wl) >= 2:
            depth_rows = safe_div(std[:, wl[-1]], std[:, wl[0]])
            depth = float(nanmedian(depth_rows))
            if np.isfinite(depth) and (depth > th.signal_depth_factor or depth < 1.0 / th.signal_depth_factor):
                show_margins.append(_either_way(depth, th.signal_depth_factor))
                with np.errstate(invalid="ignore"):
                    held |= (depth_rows > th.signal_depth_factor) | (depth_rows < 1.0 / th.signal_depth_factor)
                shows.append(f"activation std changes {fmt_num(depth)}× from {label(run.layers[wl[0]].name)} to "
                             f"{label(run.layers[wl[-1]].name)} on the first steps (threshold "
                             f"{fmt_num(th.signal_depth_factor)}× either way)")
                evidence["early_activation_depth_ratio"] = depth
        sat, units = stat(run, "layer", "saturated"), stat(run, "layer", "units")
        dmean = stat(run, "layer", "dmean")
        for li, _, _ in mis:
            if (run.layers[li].act or "").lower() not in SATURATING_ACTIVATIONS:
                continue
            name = label(run.layers[li].name)
            f_rows = safe_div(sat[early, li], units[early, li]) if sat is not None and units is not None else \
                np.full(early.size, np.nan)
            dm_rows = dmean[early, li] if dmean is not None else np.full(early.size, np.nan)
            f = float(nanmedian(f_rows))
            dm = float(nanmedian(dm_rows))
            if np.isfinite(f) and f >= th.saturation_fraction:
                shows.append(f"{pct(f)} of {name}'s units saturated on the first steps")
                show_margins.append(fraction_margin(f, th.saturation_fraction))
                with np.errstate(invalid="ignore"):
                    held |= f_rows >= th.saturation_fraction
            elif np.isfinite(dm) and dm < th.saturation_dmean:
                # Few units pinned on every sample, but most inputs land in the flat tails: the layer passes
                # less than ``saturation_dmean`` of a linear unit's gradient from the start.
                shows.append(f"{name}'s mean {run.layers[li].act} derivative is {pct(dm)} of its maximum on the "
                             f"first steps (threshold {pct(th.saturation_dmean)})")
                show_margins.append(fraction_margin(dm, th.saturation_dmean, 0.0))
                with np.errstate(invalid="ignore"):
                    held |= dm_rows < th.saturation_dmean
    loss_support = 0.0
    sl = start_loss(run, th) if mis else None
    if sl is not None and sl.value >= th.init_loss_chance_factor * sl.chance:
        ratio = sl.value / sl.chance
        where = (f"median of the first {sl.n} logged values, {fmt_steps(sl.steps)}" if sl.per == "step"
                 else f"the first logged value, step {sl.steps[0]}")
        shows.append(f"the training loss starts at {fmt_num(sl.value)} ({where}): {fmt_num(ratio)}× the "
                     f"chance-level loss log({sl.classes}) = {fmt_num(sl.chance)} where a well-initialized model "
                     f"starts (threshold {fmt_num(th.init_loss_chance_factor)}×)")
        show_margins.append(ratio_margin(ratio, th.init_loss_chance_factor))
        loss_support = support(sl.hits, sl.n, th.confidence_support_level)
        evidence.update(start_loss=sl.value, start_loss_steps=sl.steps, chance_loss=sl.chance,
                        classes=sl.classes, start_loss_ratio=ratio)
    parts: list[str] = []
    layers: list[str] = []
    per_layer: dict[str, dict[str, object]] = {}
    init_margin = 1.0 if symmetric else 0.0     # the worst layer's margin past poor_init_factor (confidence)
    if mis and shows:
        for li, q, tgt in mis:
            init_margin = max(init_margin, _either_way(q, th.poor_init_factor))
            la = run.layers[li]
            wp = run.params[pidx[la.weight]] if la.weight in pidx else None
            actual = (wp.init_std or 0.0) ** 2 if wp is not None else float("nan")
            layers.append(la.name)
            per_layer[la.name] = {"init_var": actual, "target_var": tgt.variance, "scheme": tgt.scheme,
                                  "ratio": q, "activation": la.act, "nonlinearity": tgt.nonlinearity,
                                  "fan_in": la.fan_in, "fan_out": la.fan_out}
            parts.append(f"{label(la.name)}: init variance {fmt_num(actual)} is {fmt_num(q)}× the "
                         f"{tgt.scheme.capitalize()} target {fmt_num(tgt.variance)} for "
                         f"{la.act or 'no activation'} (threshold {fmt_num(th.poor_init_factor)}× either way)")
    for li in symmetric:
        la = run.layers[li]
        tgt = init_target(la)
        layers.append(la.name)
        per_layer[la.name] = {"init_var": 0.0, "target_var": tgt.variance if tgt else None,
                              "scheme": tgt.scheme if tgt else None, "ratio": 0.0, "activation": la.act,
                              "nonlinearity": tgt.nonlinearity if tgt else "relu", "fan_in": la.fan_in,
                              "fan_out": la.fan_out, "symmetric": True}
        parts.append(f"{label(la.name)}: all weights equal at init (std 0) — its units never become different")
    if not parts:
        return []
    msg = "; ".join(parts[:th.fix_max_layers])
    if len(parts) > th.fix_max_layers:
        rest = [v["ratio"] for n, v in per_layer.items() if n in layers[th.fix_max_layers:]]
        qs = [float(q) for q in rest if isinstance(q, (int, float)) and q > 0]
        span = f", {fmt_num(min(qs))}×–{fmt_num(max(qs))}× their targets" if qs else ""
        msg += f"; and {len(parts) - th.fix_max_layers} more layers{span} (evidence: layers)"
    if shows:
        msg += " — shows as: " + "; ".join(shows)
    evidence["layers"] = per_layer
    evidence["shows"] = shows
    detail = PoorInitDetail(nonlinearity={n: str(v["nonlinearity"]) for n, v in per_layer.items()
                                          if v.get("nonlinearity") is not None})
    return [Finding(code, Severity.WARNING, "Poor weight initialization", msg, layers=tuple(layers),
                    steps=early_steps, evidence=evidence, detail=detail,
                    confidence=confidence(mean(init_margin, agree(*show_margins),
                                               max(support(int(held.sum()), held.size, th.confidence_support_level),
                                                   loss_support)),
                                          th.confidence_floor))]


# ---------------------------------------------------------------- fixes

def poor_init_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, PoorInitDetail) else PoorInitDetail()
    acts = {n: (None if a in (None, "linear") else a) for n, a in d.nonlinearity.items()}
    return [
        init_fix(run, f.layers, "He for ReLU, Glorot for tanh/sigmoid/linear, LeCun for SELU", th, act=acts),
        norm_fix(run, f.layers, "normalization makes the net far less sensitive to the initial scale", th),
    ]


RULES = (Rule(Code.POOR_INIT, poor_init, poor_init_fixes, "init", needs=(LOG,)),)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
