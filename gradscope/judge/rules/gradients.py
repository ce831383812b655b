"""Gradient rules: vanishing and exploding gradients.

The depth measure is each weighted layer's *relative* gradient ||∇W||/||W|| (per-parameter ``grad_norm`` over
``norm``): it is what sets how fast the layer learns (an SGD step changes W by lr·||∇W||), it does not depend on
the layer's width, batch size or number of calls, and it is comparable between the first and the last layer.
When parameter statistics are missing the rules fall back to the root-mean-square element of the gradient
w.r.t. the layer output, ``grad_norm / sqrt(count)`` (normalized per element, so wide and narrow layers and
different batch sizes compare), which is noisier because layer widths differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.judge.confidence import agree, confidence, mean, ratio_margin, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    STEPS,
    Context,
    Rule,
    RuleResult,
    early_count,
    early_reference,
    finite_rows,
    fmt_num,
    fmt_steps,
    grad_to_weight_before,
    is_classifier,
    label,
    loss_scaling,
    nanmedian,
    output_layer,
    pct,
    safe_div,
    stat,
    step_range,
    total_weight_norm,
    weighted_layers,
)
from gradscope.judge.rules._fixes import (
    clip_fix,
    init_fix,
    lr_fix,
    norm_fix,
    residual_fix,
    swap_activation,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import SATURATING_ACTIVATIONS


def _depth_gradients(run: Run) -> tuple[np.ndarray, list[int], str] | None:
    """(S, J) per-layer gradient measure for the weighted layers, their layer indices, and its name."""
    w = weighted_layers(run)
    pg, pn = stat(run, "param", "grad_norm"), stat(run, "param", "norm")
    if len(w) >= 2 and pg is not None and pn is not None:
        cols = [p for _, p in w]
        rel = safe_div(pg[:, cols], pn[:, cols])
        keep = [j for j in range(len(cols)) if np.isfinite(rel[:, j]).any()]
        if len(keep) >= 2:
            return rel[:, keep], [w[j][0] for j in keep], "relative gradient ||∇W||/||W||"
    lg, cnt = stat(run, "layer", "grad_norm"), stat(run, "layer", "count")
    if lg is None or cnt is None:
        return None
    idx = [i for i, _ in w] if len(w) >= 2 else list(range(len(run.layers)))
    rms = safe_div(lg[:, idx], np.sqrt(cnt[:, idx]))
    keep = [j for j in range(len(idx)) if np.isfinite(rms[:, j]).any()]
    if len(keep) < 2:
        return None
    return rms[:, keep], [idx[j] for j in keep], "RMS output gradient per element"


def _valid_steps(run: Run) -> np.ndarray:
    """Recorded steps that count: the optimizer step was not skipped (AMP GradScaler)."""
    ok = np.ones(run.steps.shape[0], dtype=bool)
    if run.skipped.shape == ok.shape:
        ok &= ~run.skipped
    return ok


def _hidden_output_ratio(run: Run) -> tuple[np.ndarray, list[int]] | None:
    """(S,) norm of the loss gradient w.r.t. the first weighted layer's output over that w.r.t. the last
    *hidden* weighted layer's output, and the weighted layer indices; None with fewer than three weighted
    layers or no per-layer gradient norms.

    The head is left out on purpose: its output gradient (∂L/∂logits) follows other laws (a pooled or
    last-time-step readout divides the gradient that reaches each token or time step), while hidden layers of
    a healthy stack pass on a gradient of about the same norm (Glorot & Bengio 2010, backward variance)."""
    w = [i for i, _ in weighted_layers(run)]
    lg = stat(run, "layer", "grad_norm")
    if len(w) < 3 or lg is None:
        return None
    return safe_div(lg[:, w[0]], lg[:, w[-2]]), w


@dataclass(frozen=True)
class VanishingDetail:
    """What ``vanishing_gradients`` hands its fixes: the activations after the judged layers."""

    activations: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExplodingDetail:
    """What ``exploding_gradients`` hands its fixes: where trouble began (the clipping norm is taken from the
    steps before it) and whether it grows through depth (then initialization is part of the fix)."""

    first_step: int | None = None
    through_depth: bool = False
    note: bool = False     # an info finding that only says why tests stood down: no fixes


def vanishing_gradients(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Vanishing gradients: the first layers get (almost) no gradient and stop learning.

    Symptom: the loss falls slowly or plateaus early; the layers near the input barely change.

    Detected when, on at least ``persistence`` of the recorded steps, the first weighted layer's relative
    gradient ||∇W||/||W|| is below ``vanishing_ratio`` times the last weighted layer's (depth ratio), or its
    root-mean-square gradient element is below the absolute ``vanishing_floor`` while it also gets less than
    ``vanishing_floor_ratio`` of the last layer's; or when the norm of the loss gradient w.r.t. the first
    weighted layer's output is below ``vanishing_hidden_ratio`` times that w.r.t. the last hidden layer's
    output (the backpropagated signal itself fades through the stack — it catches stacks whose forward signal
    shrinks as much as the backward one, where the weight-relative measure stays near 1, as in stacked RNNs
    initialized too small). An error below ``vanishing_ratio_error``. A converged model whose every gradient
    is tiny is not flagged (the ratios stay near 1).

    Why it matters: backpropagation multiplies the gradient by each layer's weights and activation derivative;
    factors below one compound exponentially with depth (sigmoid' ≤ 0.25; Glorot & Bengio 2010), so early
    layers keep their random initial features.

    Confidence: for each measure that fired, the Wilson lower bound (``confidence_support_level``) of the
    fraction of steps on which it held, averaged with how far its median ratio is below its threshold
    (``ratio_margin``); the two measures agree as independent signals (``agree``), mapped through
    ``confidence`` from ``confidence_floor``.

    Fixes: ReLU-family activations instead of sigmoid/tanh in hidden layers; He/Glorot initialization matched
    to the activation; normalization layers (BatchNorm/LayerNorm); residual connections. Per layer kind: a
    recurrent layer gets Glorot input weights and orthogonal recurrent weights by parameter name (LSTM forget
    bias 1), a LayerNorm on its output that keeps its tuple, and a vanilla RNN a GRU — never a residual around
    a module that returns a tuple; a transformer block gets GPT-2 init (std 0.02, residual projections scaled
    by 1/sqrt(2·n_layer)), pre-LN, warm-up and clipping instead of another norm layer.
    """
    code = Code.VANISHING_GRADIENTS
    ok_steps = _valid_steps(run) & finite_rows(run)
    dg = _depth_gradients(run)
    hid = _hidden_output_ratio(run)
    if dg is None and hid is None:
        return NotEvaluated(code, "fewer than two layers with gradient statistics; a depth ratio needs two")
    # Measure 1: relative weight gradient, first over last weighted layer.
    frac = 0.0
    valid = np.zeros_like(ok_steps)
    cond = np.zeros_like(ok_steps)
    floor_hit = np.zeros_like(ok_steps)
    ratio = np.full(ok_steps.shape, np.nan)
    if dg is not None:
        g, idx, measure = dg
        first, last = g[:, 0], g[:, -1]
        ratio = safe_div(first, last)
        valid = np.isfinite(ratio) & ok_steps
        pg = stat(run, "param", "grad_norm")
        first_layer = run.layers[idx[0]]
        pidx = {p.name: i for i, p in enumerate(run.params)}
        if pg is not None and first_layer.weight in pidx:
            p = pidx[first_layer.weight]
            numel = max(run.params[p].numel, 1)
            rms_first = pg[:, p] / math.sqrt(numel)
            with np.errstate(invalid="ignore"):
                floor_hit = (rms_first < th.vanishing_floor) & (ratio < th.vanishing_floor_ratio)
        with np.errstate(invalid="ignore"):
            cond = ((ratio < th.vanishing_ratio) | floor_hit) & valid
        if valid.sum() >= th.min_recorded_steps:
            frac = float(cond.sum() / valid.sum())
    # Measure 2: output-gradient norm, first over last hidden weighted layer.
    hfrac = 0.0
    hvalid = np.zeros_like(ok_steps)
    hcond = np.zeros_like(ok_steps)
    hratio = np.full(ok_steps.shape, np.nan)
    if hid is not None:
        hratio, wl = hid
        hvalid = np.isfinite(hratio) & ok_steps
        with np.errstate(invalid="ignore"):
            hcond = (hratio < th.vanishing_hidden_ratio) & hvalid
        if hvalid.sum() >= th.min_recorded_steps:
            hfrac = float(hcond.sum() / hvalid.sum())
    if valid.sum() < th.min_recorded_steps and hvalid.sum() < th.min_recorded_steps:
        return NotEvaluated(code, f"only {int(max(valid.sum(), hvalid.sum()))} recorded step(s) with finite "
                                  f"gradients")
    by_relative, by_hidden = frac >= th.persistence, hfrac >= th.persistence
    if not (by_relative or by_hidden):
        return []
    parts: list[str] = []
    evidence: dict[str, object] = {"threshold": th.vanishing_ratio, "floor": th.vanishing_floor}
    starving: list[str] = []
    flagged = np.zeros_like(ok_steps)
    severity = Severity.WARNING
    acts: set[str] = set()
    med_ratio = hmed = math.nan
    if by_relative and dg is not None:
        g, idx, measure = dg
        first_layer = run.layers[idx[0]]
        med_ratio = float(nanmedian(ratio[valid]))
        if med_ratio < th.vanishing_ratio_error or floor_hit[valid].mean() >= th.persistence:
            severity = Severity.ERROR
        # Which layers starve: median gradient below vanishing_ratio × the last layer's.
        per_layer = np.asarray(nanmedian(safe_div(g[valid], g[valid][:, -1:]), axis=0))
        starving += [run.layers[idx[j]].name for j in range(len(idx) - 1)
                     if np.isfinite(per_layer[j]) and per_layer[j] < th.vanishing_ratio] or [first_layer.name]
        last_name = run.layers[idx[-1]].name
        part = (f"{label(first_layer.name)}: gradient {fmt_num(med_ratio)}× that of {label(last_name)} "
                f"(median {measure} {fmt_num(float(nanmedian(g[:, 0][valid])))} vs "
                f"{fmt_num(float(nanmedian(g[:, -1][valid])))}) on {pct(frac)} of recorded steps "
                f"(threshold {fmt_num(th.vanishing_ratio)}×)")
        if floor_hit[valid].any():
            part += (f"; below the absolute floor {fmt_num(th.vanishing_floor)} on "
                     f"{pct(float(floor_hit[valid].mean()))}")
        parts.append(part)
        flagged |= cond
        evidence.update({"measure": measure, "median_depth_ratio": med_ratio, "fraction_of_steps": frac,
                         "first_layer": first_layer.name, "last_layer": last_name,
                         "per_layer_ratio": {run.layers[idx[j]].name: float(per_layer[j])
                                             for j in range(len(idx))}})
        acts |= {run.layers[i].act or "none" for i in idx}
    if by_hidden and hid is not None:
        hratio, wl = hid
        hmed = float(nanmedian(hratio[hvalid]))
        if hmed < th.vanishing_ratio_error and not by_relative:   # the weight measure, when it fired, rules
            severity = Severity.ERROR
        lg = stat(run, "layer", "grad_norm")
        assert lg is not None
        per = np.asarray(nanmedian(safe_div(lg[hvalid][:, wl[:-1]], lg[hvalid][:, wl[-2:-1]]), axis=0))
        starving += [run.layers[wl[j]].name for j in range(len(wl) - 2)
                     if np.isfinite(per[j]) and per[j] < th.vanishing_hidden_ratio] or [run.layers[wl[0]].name]
        parts.append(f"the loss gradient reaching {label(run.layers[wl[0]].name)}'s output is {fmt_num(hmed)}× the one "
                     f"reaching {label(run.layers[wl[-2]].name)}'s (median, on {pct(hfrac)} of recorded steps; "
                     f"threshold {fmt_num(th.vanishing_hidden_ratio)}×)")
        flagged |= hcond
        evidence.update({"median_hidden_output_ratio": hmed, "hidden_fraction_of_steps": hfrac,
                         "hidden_threshold": th.vanishing_hidden_ratio,
                         "per_layer_output_ratio": {run.layers[wl[j]].name: float(per[j])
                                                    for j in range(len(wl) - 1)}})
        evidence.setdefault("first_layer", run.layers[wl[0]].name)
        evidence.setdefault("median_depth_ratio", hmed)
        evidence.setdefault("fraction_of_steps", hfrac)
        acts |= {run.layers[i].act or "none" for i in wl}
    evidence["activations"] = sorted(acts)
    steps = step_range(run.steps[flagged])
    msg = "; ".join(parts) + f" ({fmt_steps(steps)})"
    level = th.confidence_support_level
    strengths = []
    if by_relative:
        strengths.append(mean(support(int(cond.sum()), int(valid.sum()), level),
                              ratio_margin(th.vanishing_ratio, med_ratio)))
    if by_hidden:
        strengths.append(mean(support(int(hcond.sum()), int(hvalid.sum()), level),
                              ratio_margin(th.vanishing_hidden_ratio, hmed)))
    conf = confidence(agree(*strengths), th.confidence_floor)
    return [Finding(code, severity, "Vanishing gradients", msg, layers=tuple(dict.fromkeys(starving)),
                    steps=steps, evidence=evidence, confidence=conf,
                    detail=VanishingDetail(activations=tuple(sorted(acts))))]


def _growth(values: np.ndarray, th: Thresholds) -> tuple[float, np.ndarray, float] | None:
    """Early median, boolean mask of later values above growth×early (NaN → False), fraction of later ones."""
    n = values.shape[0]
    k = early_count(n, th)
    if n - k < 1:
        return None
    early = early_reference(values, th)     # the level before trouble, even when it began in the early window
    if not (math.isfinite(early) and early > 0):
        return None
    later = values[k:]
    with np.errstate(invalid="ignore"):
        mask = later > early * th.exploding_growth
    fin = np.isfinite(later)
    if fin.sum() == 0:
        return None
    return early, mask, float(mask.sum() / fin.sum())


def _input_unscaled(run: Run, th: Thresholds) -> bool:
    """The model's input has a large scale: early gradients w.r.t. the first layers are large because the
    input is (dW = g ⊗ x); ``unnormalized_input`` reports the cause, so the early-window test stands down."""
    stds = [s.std for _, s in run.inputs if s.std is not None and np.isfinite(s.std)]
    return bool(stds) and float(np.median(stds)) > th.input_std_max


def _target_unscaled(run: Run, th: Thresholds) -> float | None:
    """The root-mean-square of a regression head's output (median over recorded steps) when it is above
    ``input_std_max``: the target is on a raw scale, and the loss gradient (2 (ŷ − y) / N for MSE) and with it
    every weight gradient carry that scale. None for a classifier or a standardized target."""
    head = output_layer(run)
    mean, var = stat(run, "layer", "mean"), stat(run, "layer", "var")
    if head is None or mean is None or var is None or is_classifier(run, th):
        return None
    rms = np.sqrt(np.where(var[:, head] >= 0, var[:, head], np.nan) + mean[:, head] ** 2)
    m = float(nanmedian(rms))
    return m if math.isfinite(m) and m > th.input_std_max else None


def _layer_gradient(run: Run, name: str, rows: np.ndarray) -> float:
    """A layer's gradient on the recorded steps ``rows``: the median over those steps of the largest gradient
    norm among its parameters (its output gradient when it has no parameter statistics), finite values only;
    NaN when it has none there."""
    pg, lg = stat(run, "param", "grad_norm"), stat(run, "layer", "grad_norm")
    cols = [i for i, p in enumerate(run.params) if p.layer == name]
    vals = np.full(int(rows.sum()), np.nan)
    if pg is not None and cols:
        with np.errstate(invalid="ignore"):
            g = np.where(np.isfinite(pg[rows][:, cols]), pg[rows][:, cols], np.nan)
        if np.isfinite(g).any():
            vals = np.nanmax(np.where(np.isfinite(g), g, -np.inf), axis=1)
            vals[~np.isfinite(vals)] = np.nan
    if not np.isfinite(vals).any() and lg is not None and name in [la.name for la in run.layers]:
        vals = lg[rows, run.layer_index(name)]
    return float(nanmedian(vals)) if np.isfinite(vals).any() else math.nan


def _gradient_alive(run: Run, names: list[str], steps: list[int]) -> list[str]:
    """The layers among ``names`` with a finite, positive gradient (``_layer_gradient``) on the recorded steps
    in ``steps``' range: a layer whose gradient is 0 (dead units), not finite or absent is never named as
    exploding — its activations may have blown up, but no gradient explodes through it."""
    r = step_range(steps)
    rows = (run.steps >= r[0]) & (run.steps <= r[1]) if r is not None else np.ones(run.steps.shape, dtype=bool)
    if not rows.any():
        rows = np.ones(run.steps.shape, dtype=bool)
    out = []
    for n in dict.fromkeys(names):
        g = _layer_gradient(run, n, rows)
        if math.isfinite(g) and g > 0:
            out.append(n)
    return out


def _growth_before(values: np.ndarray, steps: np.ndarray, first_bad: int, th: Thresholds) -> float | None:
    """The largest finite total gradient norm before step ``first_bad`` over its early level
    (``early_reference``); None when there is none to compare. At ``exploding_growth``× or more the gradients
    grew into the overflow; below it they jumped from their usual level straight to NaN/Inf (a non-finite
    weight, input or loss got in)."""
    before = values[steps < first_bad]
    fin = before[np.isfinite(before)]
    if fin.size == 0:
        return None
    early = early_reference(fin, th)
    if not (math.isfinite(early) and early > 0):
        return None
    return float(np.max(fin)) / early


def exploding_gradients(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Exploding gradients (and activations): gradient or activation magnitudes blow up.

    Symptom: loss spikes, jumps to NaN/Inf, or oscillates wildly; weights grow without bound.

    Detected when any of these holds:
    non-finite parameter gradients on a step the optimizer did not skip, after the total gradient norm grew
    ``exploding_growth``× its early level or while it was already ``exploding_relative_grad``× the total
    weight norm (NaN gradients straight from the usual level come from a NaN weight, input or loss: that is
    ``divergence``, and an info note says so);
    the first layer's relative gradient exceeds ``exploding_ratio`` × the last layer's on ``persistence`` of
    the steps (depth ratio, the mirror of vanishing);
    the total gradient norm grows above ``exploding_growth`` × its early level (``early_reference``: the lowest
    median of ``early_min_steps`` consecutive values in the early window, so a blow-up inside that window is
    measured from before it) on ``exploding_persistence`` of the later steps (this catches a model whose every
    layer grows alike, depth ratio ≈ 1);
    a hidden layer's activation std grows above ``exploding_activation_growth`` × its early value likewise
    (not the output layer: logits grow as a classifier becomes confident);
    the activation std grows by ``signal_depth_factor`` from the first to the last weighted layer (on
    ``persistence`` of the steps, or as the median of the early window — a signal that blows up through the
    stack from the start — while the last layer's std is above ``exploding_activation_floor``; the early test
    stands down when the input itself has a std above ``input_std_max``);
    the total gradient norm exceeds ``exploding_relative_grad`` × the total weight norm on ``persistence`` of
    the steps, or over the early window (huge from the very start, even if an adaptive optimizer tames it;
    not when the input itself has a std above ``input_std_max``, which ``unnormalized_input`` reports).

    Not counted as exploding (an info finding says why instead): gradients multiplied by an AMP loss scale that
    ``watch`` was not given (``scaler=``): the optimizer-step norm is the backward norm over an exact power of
    two, or overflowing steps were skipped while the weights stayed finite — the non-finite and magnitude tests
    then use the unscaled norms when the scale is known and stand down when it is not; and the
    gradient-to-weight test on a regression whose head outputs a raw-scale target (RMS above
    ``input_std_max``; not a classifier, see ``is_classifier``): the gradients carry the target's units. The
    depth test compares the first weighted layer with the last *hidden* one (the head's output grows to the
    target's or the logits' scale; with fewer than three weighted layers it does not run).

    The layers named are those with a finite, positive gradient on the flagged steps: a layer whose gradient is
    0 (dead units), not finite or absent is never named as exploding.

    Why it matters: gradient factors above one compound with depth (and with time, once updates enlarge the
    weights), so steps overshoot, the loss diverges and numbers overflow.

    Confidence: each criterion that fired gives the Wilson lower bound (``confidence_support_level``) of the
    fraction of steps it held on, averaged with how far its statistic is past its threshold (``ratio_margin``);
    the criteria agree as independent signals (``agree``), mapped through ``confidence`` from
    ``confidence_floor``. The info note's confidence comes the same way from the evidence for each test that
    stood down (the share of steps with a known loss scale, the target's RMS over ``input_std_max``, how far
    below ``exploding_growth`` the gradient stayed before turning NaN).

    Fixes: gradient clipping at a norm taken from the healthy early steps; a lower learning rate;
    normalization layers; initialization matched to the activation (recurrent layers: orthogonal recurrent
    weights by parameter name; transformer blocks: GPT-2 init, pre-LN and warm-up, no extra norm layer).
    """
    code = Code.EXPLODING_GRADIENTS
    valid = _valid_steps(run)
    scaled = loss_scaling(run, th)
    raw_target = _target_unscaled(run, th)
    stood_down: list[str] = []
    reasons: list[str] = []
    evidence: dict[str, object] = {}
    layers: list[str] = []
    flagged_steps: list[int] = []
    strengths: list[float] = []     # one per criterion that fired: its evidence in [0, 1] (see the docstring)
    note_strengths: list[float] = []   # the same for each test that stood down (the info note's confidence)
    level = th.confidence_support_level
    severity = Severity.WARNING

    # 1. Non-finite parameter gradients on steps that were not skipped by a GradScaler.
    gnf = stat(run, "param", "grad_nonfinite")
    skipped_steps = set(run.steps[~valid].tolist())
    nf_steps: list[int] = []
    nf_layer: str | None = None
    if gnf is not None:
        bad = (np.nan_to_num(gnf, nan=0.0) > 0).any(axis=1) & valid
        nf_steps = run.steps[bad].tolist()
    for rec in sorted(run.nonfinite, key=lambda r: r.step):
        if rec.where == "gradient" and rec.step not in skipped_steps:
            nf_steps.append(rec.step)
            nf_layer = nf_layer or rec.layer
    if nf_steps and scaled is not None:
        stood_down.append(f"non-finite gradients on {len(set(nf_steps))} step(s) (overflows the scaler skipped)")
        note_strengths.append(support(int(np.isfinite(scaled.scale).sum()), int(run.steps.size), level))
        valid = valid & ~np.isin(run.steps, nf_steps)
        nf_steps = []
    if nf_steps:
        first = min(nf_steps)
        gs, gv = (run.all_steps, run.all_grad_norm) if run.all_grad_norm.size else (run.steps, run.grad_norm)
        grew = _growth_before(gv, gs, first, th)
        huge = grad_to_weight_before(run, first)
        if huge is not None and huge > th.exploding_relative_grad and (grew is None or grew < th.exploding_growth):
            severity = Severity.ERROR
            reasons.append(f"non-finite gradients from step {first}" + (f" (first in {nf_layer})" if nf_layer else "")
                           + f" after the total gradient norm was already {fmt_num(huge)}× the total weight norm "
                           f"(threshold {fmt_num(th.exploding_relative_grad)}×)")
            evidence["nonfinite_first_step"] = first
            evidence["grad_to_weight_before_nonfinite"] = huge
            flagged_steps += nf_steps
            if nf_layer:
                layers.append(nf_layer)
            strengths.append(ratio_margin(huge, th.exploding_relative_grad))
        elif grew is None or grew < th.exploding_growth:
            # NaN gradients from a NaN weight (or input, or loss) are the divergence's, not an explosion.
            rose = f" (at most {fmt_num(grew)}× its early level)" if grew is not None else ""
            stood_down.append(f"non-finite gradients from step {first}: the gradient norm did not grow before them"
                              f"{rose} — a non-finite weight, input or loss got in (see divergence)")
            note_strengths.append(ratio_margin(th.exploding_growth, grew) if grew is not None else 0.0)
        else:
            severity = Severity.ERROR
            reasons.append(f"non-finite gradients from step {first}" + (f" (first in {nf_layer})" if nf_layer else "")
                           + f" after the total gradient norm grew {fmt_num(grew)}× its early level")
            evidence["nonfinite_first_step"] = first
            evidence["nonfinite_after_growth"] = grew
            flagged_steps += nf_steps
            if nf_layer:
                layers.append(nf_layer)
            nf_rows = int(np.isin(run.steps, nf_steps).sum())
            strengths.append(mean(ratio_margin(grew, th.exploding_growth),
                                  support(nf_rows, int(max(valid.sum(), nf_rows)), level)))

    # 2. Depth ratio, first layer over last.
    dg = _depth_gradients(run)
    if dg is not None:
        g, idx, measure = dg
        ratio = safe_div(g[:, 0], g[:, -1])
        ok = np.isfinite(ratio) & valid
        if ok.sum() >= th.min_recorded_steps:
            with np.errstate(invalid="ignore"):
                cond = (ratio > th.exploding_ratio) & ok
            frac = float(cond.sum() / ok.sum())
            if frac >= th.persistence:
                med = float(nanmedian(ratio[ok]))
                reasons.append(f"{label(run.layers[idx[0]].name)} gets {fmt_num(med)}× the {measure} of "
                               f"{label(run.layers[idx[-1]].name)} on {pct(frac)} of steps "
                               f"(threshold {fmt_num(th.exploding_ratio)}×)")
                evidence["median_depth_ratio"] = med
                layers.append(run.layers[idx[0]].name)
                flagged_steps += run.steps[cond].tolist()
                strengths.append(mean(support(int(cond.sum()), int(ok.sum()), level),
                                      ratio_margin(med, th.exploding_ratio)))

    # 3. Growth of the total gradient norm over time (every step when available).
    if scaled is not None:
        # Scaled norms: the recorded steps divided by their scale (the per-step norms carry no scale).
        gsteps, gvals = run.steps, np.where(valid, run.grad_norm, np.nan) / scaled.scale
    elif run.all_grad_norm.size >= th.min_recorded_steps:
        gsteps, gvals = run.all_steps, run.all_grad_norm
    else:
        gsteps, gvals = run.steps, np.where(valid, run.grad_norm, np.nan)
    gr = _growth(gvals, th) if gvals.size and np.isfinite(gvals).any() else None
    if gr is not None:
        early, mask, frac = gr
        fin_mask = mask[np.isfinite(gvals[early_count(gvals.shape[0], th):])]
        # Sustained to the end counts however short: a run that ends exploded did not recover.
        ended = fin_mask.size >= th.early_min_steps and bool(fin_mask[-th.early_min_steps:].all())
        if frac >= th.exploding_persistence or ended:
            k0 = early_count(gvals.shape[0], th)
            later_steps = gsteps[k0:]
            with np.errstate(invalid="ignore"):
                flagged_steps += gsteps[:k0][gvals[:k0] > early * th.exploding_growth].tolist()   # began early
            peak = float(np.nanmax(gvals)) / early
            if peak >= th.exploding_growth ** 2:
                severity = Severity.ERROR
            reasons.append(f"total gradient norm rose to {fmt_num(peak)}× its early level {fmt_num(early)} "
                           f"(above {fmt_num(th.exploding_growth)}× on {pct(frac)} of later steps)")
            evidence["grad_norm_early_median"] = early
            evidence["grad_norm_peak_growth"] = peak
            flagged_steps += later_steps[mask].tolist()
            strengths.append(mean(support(int(fin_mask.sum()), int(fin_mask.size), level),
                                  ratio_margin(peak, th.exploding_growth)))

    # 4. Activation std growth per layer over time, and 5. across depth.
    var = stat(run, "layer", "var")
    if var is not None and var.shape[0] >= th.min_recorded_steps:
        std = np.sqrt(np.where(var >= 0, var, np.nan))
        k = early_count(std.shape[0], th)
        if std.shape[0] - k >= 1:
            early_std = np.asarray(nanmedian(std[:k], axis=0))
            with np.errstate(invalid="ignore", divide="ignore"):
                grow = std[k:] / early_std
                hit = (grow > th.exploding_activation_growth) & (std[k:] > th.exploding_activation_floor)
            fin = np.isfinite(grow)
            fr = hit.sum(axis=0) / np.maximum(fin.sum(axis=0), 1)
            # The head is left out: a classifier's logits are meant to grow as it grows confident (std 0.05
            # at init → 10+ at 99 % accuracy), and a regression output grows to the target's scale.
            head = output_layer(run)
            grown = [j for j in range(std.shape[1]) if fin[:, j].any() and fr[j] >= th.exploding_persistence
                     and early_std[j] > 0 and j != head]
            # Not a layer no gradient flows through (dead units, NaN): its activations grew, its gradient did not.
            alive = set(_gradient_alive(run, [run.layers[j].name for j in grown],
                                        run.steps[k:][hit[:, grown].any(axis=1)].tolist() if grown else []))
            grown = [j for j in grown if run.layers[j].name in alive]
            if grown:
                worst = max(grown, key=lambda j: float(np.nanmax(grow[:, j])))
                reasons.append(f"activation std of {', '.join(label(run.layers[j].name) for j in grown[:3])}"
                               f"{' …' if len(grown) > 3 else ''} grew up to "
                               f"{fmt_num(float(np.nanmax(grow[:, worst])))}× its early value "
                               f"(threshold {fmt_num(th.exploding_activation_growth)}×)")
                evidence["activation_growth_layers"] = [run.layers[j].name for j in grown]
                layers += [run.layers[j].name for j in grown]
                flagged_steps += run.steps[k:][hit[:, grown].any(axis=1)].tolist()
                strengths.append(mean(support(int(hit[:, worst].sum()), int(fin[:, worst].sum()), level),
                                      ratio_margin(float(np.nanmax(grow[:, worst])), th.exploding_activation_growth)))
        # First weighted layer to the last hidden one: the head is left out, as in the growth test above.
        w = [i for i, _ in weighted_layers(run)][:-1]
        if len(w) >= 2:
            depth = safe_div(std[:, w[-1]], std[:, w[0]])
            ok = np.isfinite(depth)
            if ok.sum() >= th.min_recorded_steps:
                with np.errstate(invalid="ignore"):
                    cond = (depth > th.signal_depth_factor) & (std[:, w[-1]] > th.exploding_activation_floor)
                frac = float(cond.sum() / ok.sum())
                # Early window: a signal that blows up through the stack from the first steps, even if the
                # first updates then shrink the weights (the same reasoning as the early gradient test below).
                k = early_count(int(ok.sum()), th)
                early_rows = np.nonzero(ok)[0][:k]
                early_med = float(nanmedian(depth[early_rows]))
                early_last = float(nanmedian(std[early_rows, w[-1]]))
                early_hit = (early_med > th.signal_depth_factor and early_last > th.exploding_activation_floor
                             and not _input_unscaled(run, th))
                if frac >= th.persistence or early_hit:
                    med = float(nanmedian(depth[ok])) if frac >= th.persistence else early_med
                    when = "" if frac >= th.persistence else f" over the first {k} recorded steps"
                    first_name, last_name = label(run.layers[w[0]].name), label(run.layers[w[-1]].name)
                    reasons.append(f"activation std grows {fmt_num(med)}× from {first_name} to {last_name}{when} "
                                   f"(threshold {fmt_num(th.signal_depth_factor)}×)")
                    evidence["activation_depth_growth"] = med
                    layers += [run.layers[i].name for i in w[1:]]
                    flagged_steps += run.steps[cond].tolist() if frac >= th.persistence else \
                        run.steps[early_rows].tolist()
                    hits_n, of_n = ((int(cond.sum()), int(ok.sum())) if frac >= th.persistence else
                                    (int(cond[early_rows].sum()), int(early_rows.size)))
                    strengths.append(mean(support(hits_n, of_n, level), ratio_margin(med, th.signal_depth_factor)))

    # 6. Gradient huge relative to the weights, from the start.
    wn = total_weight_norm(run)
    if wn is not None and scaled is not None and not scaled.known:
        stood_down.append("the gradient magnitude tests (the loss scale is unknown)")
        note_strengths.append(0.0)
        wn = None
    if wn is not None:
        rel = safe_div(run.grad_norm / scaled.scale if scaled is not None else run.grad_norm, wn)
        ok = np.isfinite(rel) & valid
        if ok.sum() >= th.min_recorded_steps:
            with np.errstate(invalid="ignore"):
                cond = (rel > th.exploding_relative_grad) & ok
            frac = float(cond.sum() / ok.sum())
            k = early_count(int(ok.sum()), th)
            early_rel = rel[ok][:k]
            early_med = float(nanmedian(early_rel))
            if raw_target is not None and (frac >= th.persistence or early_med > th.exploding_relative_grad):
                stood_down.append(f"the gradient-to-weight test (median {fmt_num(float(nanmedian(rel[ok])))}×): the "
                                  f"regression head outputs a raw-scale target (RMS {fmt_num(raw_target)}, threshold "
                                  f"{fmt_num(th.input_std_max)}), and the loss gradient carries its units — "
                                  f"standardize the target (and un-scale the predictions) instead")
                note_strengths.append(ratio_margin(raw_target, th.input_std_max))
            elif frac >= th.persistence:
                med = float(nanmedian(rel[ok]))
                reasons.append(f"total gradient norm is {fmt_num(med)}× the total weight norm "
                               f"(threshold {fmt_num(th.exploding_relative_grad)}×)")
                evidence["median_grad_to_weight"] = med
                flagged_steps += run.steps[cond].tolist()
                strengths.append(mean(support(int(cond.sum()), int(ok.sum()), level),
                                      ratio_margin(med, th.exploding_relative_grad)))
            elif early_med > th.exploding_relative_grad and not _input_unscaled(run, th):
                # Huge from the start, then tamed (an adaptive optimizer rescales its steps): still explosive
                # at init, and the first updates were thrown around by it.
                reasons.append(f"total gradient norm was {fmt_num(early_med)}× the total weight norm over the "
                               f"first {k} recorded steps (threshold {fmt_num(th.exploding_relative_grad)}×)")
                evidence["early_grad_to_weight"] = early_med
                flagged_steps += run.steps[ok][:k].tolist()
                with np.errstate(invalid="ignore"):
                    early_hits = int((early_rel > th.exploding_relative_grad).sum())
                strengths.append(mean(support(early_hits, int(early_rel.size), level),
                                      ratio_margin(early_med, th.exploding_relative_grad)))

    if scaled is not None and not stood_down:
        note_strengths.append(support(int(np.isfinite(scaled.scale).sum()), int(run.steps.size), level))
    notes = _stood_down_note(scaled, stood_down, reasons, confidence(agree(*note_strengths), th.confidence_floor))
    if not reasons:
        return notes
    evidence["criteria"] = reasons
    steps = step_range(flagged_steps)
    evidence["first_step"] = steps[0] if steps else None
    if not layers:
        layers = [run.layers[i].name for i, _ in weighted_layers(run)]
    uniq = _gradient_alive(run, layers, flagged_steps)
    msg = "; ".join(reasons) + f" ({fmt_steps(steps)})"
    conf = confidence(agree(*strengths), th.confidence_floor)
    detail = ExplodingDetail(first_step=steps[0] if steps else None,
                             through_depth="activation_depth_growth" in evidence or "median_depth_ratio" in evidence)
    return [Finding(code, severity, "Exploding gradients", msg, layers=tuple(uniq), steps=steps,
                    evidence=evidence, confidence=conf, detail=detail), *notes]


def _stood_down_note(scaled: object, stood_down: list[str], reasons: list[str], conf: float) -> list[Finding]:
    """An info finding that says which tests stood down and why (loss-scaled gradients, a raw-scale target, NaN
    gradients that did not grow first); ``conf`` from the evidence for each (see ``exploding_gradients``)."""
    if not stood_down and scaled is None:
        return []
    parts = []
    title = "Gradients judged with care"
    if scaled is not None:
        how = getattr(scaled, "how", "")
        title = "Gradients look loss-scaled (AMP GradScaler)"
        parts.append(f"the recorded gradients look multiplied by an AMP loss scale: {how}; pass scaler= to "
                     f"gradscope.watch so it records unscaled norms and skipped steps")
    if stood_down:
        parts.append("not counted as exploding: " + "; ".join(stood_down))
    return [Finding(Code.EXPLODING_GRADIENTS, Severity.INFO, title, "; ".join(parts),
                    evidence={"stood_down": stood_down, "loss_scaled": scaled is not None},
                    confidence=conf, detail=ExplodingDetail(note=True))]


# ---------------------------------------------------------------- fixes

def vanishing_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, VanishingDetail) else VanishingDetail()
    sat = sorted(set(d.activations) & SATURATING_ACTIVATIONS)
    fixes: list[Fix | None] = []
    if sat:
        fixes.append(Fix(FixKind.ACTIVATION,
                         f"Use ReLU (or GELU) instead of {'/'.join(sat)} in the hidden layers: its derivative is 1 "
                         f"for positive inputs, so gradients do not shrink layer by layer",
                         swap_activation(sat, "nn.ReLU()", keep_output=True)))
    fixes.append(init_fix(run, f.layers, "He for ReLU-like, Glorot for tanh/sigmoid keeps gradient variance "
                                         "constant across depth", th))
    fixes.append(norm_fix(run, f.layers, "re-centres and re-scales each layer's signal", th))
    if f.layers:
        fixes.append(residual_fix(run, f.layers, th))
    return fixes


def exploding_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, ExplodingDetail) else ExplodingDetail()
    if d.note:
        return []
    first = d.first_step if d.first_step is not None else (f.steps[0] if f.steps else None)
    fixes: list[Fix | None] = [clip_fix(run, th, first),
                               lr_fix(run, th.fix_lr_backoff, "smaller steps keep the weights from growing")]
    fixes.append(norm_fix(run, f.layers, "bounds the signal each layer passes on", th))
    if d.through_depth:
        fixes.append(init_fix(run, f.layers, "the per-layer gain compounds with depth", th))
    return fixes


RULES = (
    Rule(Code.EXPLODING_GRADIENTS, exploding_gradients, exploding_fixes, "gradients", needs=(LOG, STEPS)),
    Rule(Code.VANISHING_GRADIENTS, vanishing_gradients, vanishing_fixes, "gradients", needs=(LOG, STEPS)),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
