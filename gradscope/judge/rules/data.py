"""Data rule: inputs far from standardized."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.judge.confidence import agree, confidence, ratio_margin, support
from gradscope.judge.confidence import mean as mean_of
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    Context,
    Need,
    Rule,
    RuleResult,
    fmt_num,
    label,
    module_path,
    stat,
    step_range,
    weighted_layers,
)
from gradscope.judge.rules._fixes import DEVICE_LINE, REBUILD_OPTIMIZER, sig, wrap_lines
from gradscope.judge.rules._layers import layer_info, recurrent, wrappable
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import InputStats, LayerInfo


def _first_layer(run: Run) -> LayerInfo | None:
    for la in run.layers:
        if la.name != "":      # "" is the root module
            return la
    return None


def _median(vals: list[float | None]) -> float | None:
    xs = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    return float(np.median(xs)) if xs else None


@dataclass(frozen=True)
class InputDetail:
    """What ``unnormalized_input`` hands its fixes: the observed input mean and std (medians over steps), and
    whether the model standardizes its input itself (then there is nothing to fix)."""

    mean: float | None = None
    std: float | None = None
    inside: bool = False


def first_layer_input_rms(run: Run) -> tuple[str, int, float] | None:
    """(layer name, step, estimated root-mean-square of the input the first weighted layer receives), or None.

    gradscope records the root module's input, not the first layer's; a model that standardizes its raw input
    inside ``forward()`` (a buffer mean/std, detectron2-style) feeds its first layer something else. For a
    Linear or convolution z = W x + b, E[z²] ≈ fan_in · mean(w²) · E[x²] while the weights are still
    independent of the data (the first recorded step), so E[x²] ≈ E[z²] / (fan_in · mean(w²)) from the layer's
    output mean/variance and its weight norm (Glorot & Bengio 2010's variance argument, read backwards)."""
    w = weighted_layers(run)
    mean, var, norm = stat(run, "layer", "mean"), stat(run, "layer", "var"), stat(run, "param", "norm")
    if not w or mean is None or var is None or norm is None or not run.steps.size:
        return None
    li, pi = w[0]
    la, p = run.layers[li], run.params[pi]
    t = la.type.lower()
    if not (t == "linear" or t.startswith("conv")) or not la.fan_in or p.numel <= 0:
        return None
    rows = np.nonzero(np.isfinite(mean[:, li]) & np.isfinite(var[:, li]) & np.isfinite(norm[:, pi]))[0]
    if not rows.size:
        return None
    r = int(rows[0])
    msq = float(norm[r, pi]) ** 2 / p.numel
    if not msq > 0:
        return None
    ez2 = float(var[r, li]) + float(mean[r, li]) ** 2
    return la.name, int(run.steps[r]), math.sqrt(max(ez2, 0.0) / (la.fan_in * msq))


def _records_held(stats: list[InputStats], th: Thresholds) -> tuple[int, int]:
    """(input records on which any ``unnormalized_input`` criterion held, records with statistics), one array
    pass: the support behind the rule's confidence."""
    def arr(vals: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in vals], dtype=float)

    sd, mu = arr([s.std for s in stats]), np.abs(arr([s.mean for s in stats]))
    fsn, fsx = arr([s.feature_std_min for s in stats]), arr([s.feature_std_max for s in stats])
    fmu = arr([s.feature_mean_absmax for s in stats])
    with np.errstate(invalid="ignore", divide="ignore"):
        held = ((sd > th.input_std_max) | (mu / sd > th.input_mean_std_ratio) | (fsx > th.input_std_max)
                | (fmu > th.input_mean_max) | (mu > th.input_mean_max)
                | ((fsn > 0) & (fsx / fsn > th.input_feature_spread)))
    seen = np.isfinite(sd) | np.isfinite(mu) | np.isfinite(fsx) | np.isfinite(fmu)
    return int((held & seen).sum()), int(seen.sum())


INPUTS = Need("statistics of the model's input (a float tensor)",
              lambda run, th: None if run.inputs else
              "no input statistics recorded (the model's first input is not a float tensor)")


def unnormalized_input(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Unnormalized input: the model's input is far from zero mean and unit variance.

    Symptom: slow or unstable training from the start, large first-layer activations, saturation or dead
    units in the first layer; features with large ranges dominate the others.

    Detected when, in the statistics of the root module's first tensor input (median over recorded steps),
    the overall std exceeds ``input_std_max``, |mean|/std exceeds ``input_mean_std_ratio``, a feature's
    std exceeds ``input_std_max`` or its |mean| exceeds ``input_mean_max``, or the per-feature stds span more
    than ``input_feature_spread`` (features with zero std, e.g. constant border pixels, are left out).
    Not evaluated when the first layer is an embedding (the inputs are token ids, not magnitudes) or a
    normalization layer (the model standardizes its own input). gradscope records the root module's input,
    not the first layer's: when the root input is large (RMS above ``input_std_max``) but the root-mean-square
    of what the first Linear/convolution receives, estimated from its output and weights on the first
    recorded step, is below ``input_inside_rms``, the model standardizes the input inside ``forward()`` (a
    buffer mean/std): an info finding says so, with no fix.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower bound
    (``confidence_support_level``) of the share of input records on which any criterion held — and the criteria
    that fired taken as agreeing signals, 1 − Π(1 − mᵢ), each with its margin mᵢ = 1 − threshold / value (log
    scale; |mean|/std against ``input_mean_std_ratio``, a std against ``input_std_max``, …). The info finding:
    floor + (1 − floor) × the mean of 1 − estimate / ``input_inside_rms`` and 1 − ``input_std_max`` / raw RMS.

    Why it matters: the variance arguments behind Glorot/He initialization assume zero-mean, unit-variance
    inputs; a large or offset input scales the first layer's pre-activations and gradients accordingly, and
    features on very different scales give an ill-conditioned loss surface.

    Fixes: standardize with the training set's mean and std (``transforms.Normalize`` for images,
    ``StandardScaler`` for tables), applying the same transform to validation and test data; or a
    BatchNorm/LayerNorm as the first layer.
    """
    code = Code.UNNORMALIZED_INPUT
    first = _first_layer(run)
    if first is not None:
        t = first.type.lower()
        if "embedding" in t:
            return NotEvaluated(code, f"the first layer {first.name} is an {first.type}: inputs are token ids")
        if "norm" in t:
            return NotEvaluated(code, f"the first layer {first.name} ({first.type}) normalizes the input itself")
    stats: list[InputStats] = [s for _, s in run.inputs]
    mean = _median([s.mean for s in stats])
    std = _median([s.std for s in stats])
    fsmin = _median([s.feature_std_min for s in stats])
    fsmax = _median([s.feature_std_max for s in stats])
    fmean = _median([s.feature_mean_absmax for s in stats])
    reasons: list[str] = []
    margins: list[float] = []      # per criterion that fired, how far past its threshold (for the confidence)
    if std is not None and std > th.input_std_max:
        reasons.append(f"std {fmt_num(std)} (threshold {fmt_num(th.input_std_max)})")
        margins.append(ratio_margin(std, th.input_std_max))
    if mean is not None and std is not None and std > 0 and abs(mean) / std > th.input_mean_std_ratio:
        reasons.append(f"mean {fmt_num(mean)} is {fmt_num(abs(mean) / std)} stds from 0 "
                       f"(threshold {fmt_num(th.input_mean_std_ratio)})")
        margins.append(ratio_margin(abs(mean) / std, th.input_mean_std_ratio))
    if fsmax is not None and fsmax > th.input_std_max and not (std is not None and std > th.input_std_max):
        reasons.append(f"a feature's std is {fmt_num(fsmax)} (threshold {fmt_num(th.input_std_max)})")
        margins.append(ratio_margin(fsmax, th.input_std_max))
    if fmean is not None and fmean > th.input_mean_max and not (mean is not None and abs(mean) > th.input_mean_max):
        reasons.append(f"a feature's |mean| is {fmt_num(fmean)} (threshold {fmt_num(th.input_mean_max)})")
        margins.append(ratio_margin(fmean, th.input_mean_max))
    elif mean is not None and abs(mean) > th.input_mean_max and not any("stds from 0" in r for r in reasons):
        reasons.append(f"mean {fmt_num(mean)} (threshold {fmt_num(th.input_mean_max)})")
        margins.append(ratio_margin(abs(mean), th.input_mean_max))
    if fsmin is not None and fsmax is not None and fsmin > 0 and fsmax / fsmin > th.input_feature_spread:
        reasons.append(f"feature stds span {fmt_num(fsmin)}–{fmt_num(fsmax)} ({fmt_num(fsmax / fsmin)}×, "
                       f"threshold {fmt_num(th.input_feature_spread)}×)")
        margins.append(ratio_margin(fsmax / fsmin, th.input_feature_spread))
    if not reasons:
        return []
    steps = step_range([s for s, _ in run.inputs])
    est = first_layer_input_rms(run)
    root_rms = math.sqrt(std ** 2 + (mean or 0.0) ** 2) if std is not None else None
    if est is not None and root_rms is not None and root_rms > th.input_std_max and est[2] <= th.input_inside_rms:
        name, step, rms = est
        return [Finding(code, Severity.INFO, "Input normalized inside the model",
                        f"the model's raw input is not standardized ({'; '.join(reasons)}), but what "
                        f"{label(name)} receives has an estimated RMS of {fmt_num(rms)} at step {step} (threshold "
                        f"{fmt_num(th.input_inside_rms)}; raw input RMS {fmt_num(root_rms)}): the model normalizes "
                        f"its input inside forward()", layers=(name,), steps=steps,
                        evidence={"mean": mean, "std": std, "first_layer_input_rms": rms, "criteria": reasons},
                        confidence=confidence(mean_of(1.0 - rms / th.input_inside_rms,
                                                      ratio_margin(root_rms, th.input_std_max)), th.confidence_floor),
                        detail=InputDetail(mean=mean, std=std, inside=True))]
    if est is not None:
        reasons.append(f"what {label(est[0])} receives has an estimated RMS of {fmt_num(est[2])} at step {est[1]}")
    else:
        reasons.append("judged on the root module's input: what the first layer receives is not recorded")
    evidence = {"mean": mean, "std": std, "feature_std_min": fsmin, "feature_std_max": fsmax,
                "feature_mean_absmax": fmean, "min": _median([s.min for s in stats]),
                "max": _median([s.max for s in stats]), "criteria": reasons,
                "first_layer": first.name if first else None, "first_layer_input_rms": est[2] if est else None}
    return [Finding(code, Severity.WARNING, "Inputs not normalized", "model input: " + "; ".join(reasons),
                    layers=(first.name,) if first else (), steps=steps, evidence=evidence,
                    confidence=confidence(mean_of(support(*_records_held(stats, th), th.confidence_support_level),
                                                  agree(*margins)), th.confidence_floor),
                    detail=InputDetail(mean=mean, std=std))]


# ---------------------------------------------------------------- fixes

def _norm_first(first: LayerInfo) -> Fix | None:
    """A normalization layer before the model's first layer, sized from that layer's own input attribute; none
    before an embedding (its input is token ids) or a recurrent layer (BatchNorm1d would normalize over time)."""
    if first.type == "Embedding" or recurrent(first) is not None:
        return None
    dims = first.type.lower()[-2:] if first.type.lower().startswith("conv") else None
    size_attr = "in_channels" if dims in ("1d", "2d", "3d") else "in_features" if first.type == "Linear" else None
    summary = "Or let the model normalize its input: a normalization layer first"
    if size_attr is None or not wrappable(first):
        return Fix(FixKind.BATCHNORM, summary, f"# wrap the first layer {first.name!r} in nn.Sequential with a "
                                               f"BatchNorm over its input features before it")
    path = module_path(first.name)
    norm = f"nn.BatchNorm{dims or '1d'}({path}.{size_attr}, device=device)"
    return Fix(FixKind.BATCHNORM, summary, "\n".join([DEVICE_LINE, *wrap_lines(first, norm, before=True),
                                                      REBUILD_OPTIMIZER]))


def unnormalized_input_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, InputDetail) else InputDetail()
    if d.inside:
        return []
    first = layer_info(run, f.layers[0]) if f.layers else None
    image = first is not None and first.type.lower().startswith("conv")
    m = sig(float(d.mean), 3) if d.mean is not None else "?"
    s = sig(float(d.std), 3) if d.std is not None else "?"
    if image:
        code = (f"from torchvision import transforms\n\n"
                f"# channel_means, channel_stds: per channel, over the training images (observed overall: mean {m}, "
                f"std {s})\nnormalize = transforms.Normalize(mean=channel_means, std=channel_stds)")
    else:
        code = ("mean, std = X_train.mean(0), X_train.std(0).clamp_min(1e-8)   # training set only\n"
                "X_train, X_val = (X_train - mean) / std, (X_val - mean) / std")
    fixes: list[Fix | None] = [Fix(FixKind.NORMALIZATION,
                                   f"Standardize the inputs to zero mean and unit variance (observed mean {m}, "
                                   f"std {s}) with statistics of the training set", code)]
    if first is not None:
        fixes.append(_norm_first(first))
    return fixes


RULES = (
    Rule(Code.UNNORMALIZED_INPUT, unnormalized_input, unnormalized_input_fixes, "data", needs=(LOG, INPUTS)),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
