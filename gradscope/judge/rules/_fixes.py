"""Helpers shared by the rule families' fixes: names, numbers and the snippets several fixes build.

Each family's fixes live next to its rules (``rules/<family>.py``); what more than one family writes — a
learning-rate change, clipping, a normalization layer, a re-initialization — is built here once. Snippets
assume ``import torch``, ``from torch import nn``, the model bound to ``model`` and the optimizer to
``optimizer``; the numbers in them come from the run and from ``Thresholds`` fields (``fix_*``,
``clip_percentile``).
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.judge.findings import Fix, FixKind
from gradscope.judge.rules._common import (
    current_lr,
    early_count,
    label,
    module_path,
    nanmedian,
    optimizer_name,
    weighted_layers,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import RELU_FAMILY, LayerInfo

_SEQUENCE_TYPES = ("attention", "transformer", "lstm", "gru", "rnn", "embedding")


def sig(x: float, digits: int = 2) -> str:
    """A value rounded for a snippet: 2 significant digits, Python-literal form."""
    if x == 0 or not math.isfinite(x):
        return repr(float(x))
    r = float(f"{x:.{digits}g}")
    return repr(int(r)) if r == int(r) and abs(r) < 1e6 and abs(r) >= 1 else repr(r)


def suggest_max_norm(run: Run, th: Thresholds, before_step: int | None = None) -> float | None:
    """A ``clip_grad_norm_`` max_norm: the ``clip_percentile`` of the total gradient norm on the healthy steps.

    Healthy steps are those before ``before_step`` (where trouble began) whose norm stays within
    √``exploding_growth`` (10× by default) of the early median — the run's normal range, without the
    start of the blow-up; when there are too few, the early window itself."""
    steps, vals = run.all_steps, run.all_grad_norm
    if vals.size == 0:
        steps, vals = run.steps, run.grad_norm
    ok = np.isfinite(vals) & (vals > 0)
    if ok.sum() == 0:
        return None
    steps, vals = steps[ok], vals[ok]
    early = vals[:early_count(vals.size, th)]
    ref = float(np.median(early))
    cand = vals[steps < before_step] if before_step is not None else vals
    healthy = cand[cand <= ref * math.sqrt(th.exploding_growth)]
    if healthy.size < th.early_min_steps:
        healthy = early
    p = float(np.percentile(healthy, th.clip_percentile))
    return float(f"{p:.2g}") if p > 0 else None


def layer_info(run: Run, name: str) -> LayerInfo | None:
    return next((la for la in run.layers if la.name == name), None)


def has_bias(run: Run, la: LayerInfo) -> bool:
    return any(p.endswith("bias") for p in la.params) or any(p.name == f"{la.name}.bias" for p in run.params)


def units(run: Run, la: LayerInfo) -> int | None:
    """Output units of a layer: the recorded per-unit count, else a Linear's fan_out."""
    u = run.layer_stats.get("units")
    if u is not None and u.size:
        i = run.layers.index(la)
        m = float(nanmedian(u[:, i]))
        if np.isfinite(m) and m > 0:
            return int(m)
    return la.fan_out if la.type.lower() == "linear" else None


def norm_layer(run: Run, la: LayerInfo) -> str:
    """The normalization layer for ``la``'s output: BatchNorm{1,2,3}d for convolutions, LayerNorm in sequence
    models, BatchNorm1d otherwise."""
    n = units(run, la)
    size = str(n) if n else "num_features"
    t = la.type.lower()
    if t.startswith("conv") and t[-2:] in ("1d", "2d", "3d"):
        return f"nn.BatchNorm{t[-2:]}({size})"
    if any(any(k in x.type.lower() for k in _SEQUENCE_TYPES) for x in run.layers):
        return f"nn.LayerNorm({size})"
    return f"nn.BatchNorm1d({size})"


def init_lines(run: Run, la: LayerInfo, act: str | None = None) -> list[str]:
    """``nn.init`` calls matching the activation after ``la`` (He, Glorot with gain, LeCun for SELU)."""
    path = module_path(la.name)
    a = (act if act is not None else la.act or "").lower()
    if a == "selu":
        lines = [f'nn.init.kaiming_normal_({path}.weight, nonlinearity="linear")  # LeCun normal for SELU']
    elif a == "leaky_relu":
        lines = [f'nn.init.kaiming_normal_({path}.weight, a=0.01, nonlinearity="leaky_relu")']
    elif a in RELU_FAMILY:
        lines = [f'nn.init.kaiming_normal_({path}.weight, nonlinearity="relu")']
    else:
        nl = a if a in ("tanh", "sigmoid") else "linear"
        lines = [f'nn.init.xavier_normal_({path}.weight, gain=nn.init.calculate_gain("{nl}"))']
    if has_bias(run, la):
        lines.append(f"nn.init.zeros_({path}.bias)")
    return lines


def named(run: Run, names: tuple[str, ...] | list[str], th: Thresholds) -> list[LayerInfo]:
    """The run's layers called ``names``, at most ``fix_max_layers`` of them."""
    out = [la for n in names if (la := layer_info(run, n)) is not None]
    return out[:th.fix_max_layers]


def more(names: tuple[str, ...] | list[str], th: Thresholds) -> str:
    extra = len(names) - th.fix_max_layers
    return f" (and {extra} more)" if extra > 0 else ""


def list_names(names: tuple[str, ...] | list[str], th: Thresholds) -> str:
    """Layer names for a summary: the first ``fix_max_layers``, and how many more."""
    return ", ".join(label(n) for n in names[:th.fix_max_layers]) + more(names, th)


def lr_fix(run: Run, factor: float, why: str, new_lr: float | None = None) -> Fix:
    lr = current_lr(run)
    if new_lr is None and lr is not None:
        new_lr = lr * factor
    if new_lr is not None:
        name = optimizer_name(run)
        if name and name.isidentifier():
            code = f"optimizer = torch.optim.{name}(model.parameters(), lr={sig(new_lr, 1)})"
        else:
            code = f"for group in optimizer.param_groups:\n    group[\"lr\"] = {sig(new_lr, 1)}"
        was = f" (was {sig(lr, 2)})" if lr is not None else ""
        return Fix(FixKind.LEARNING_RATE, f"Set the learning rate to {sig(new_lr, 1)}{was}: {why}", code)
    return Fix(FixKind.LEARNING_RATE, f"Multiply the learning rate by {sig(factor, 1)}: {why}",
               f"for group in optimizer.param_groups:\n    group[\"lr\"] *= {sig(factor, 1)}")


def clip_fix(run: Run, th: Thresholds, before_step: int | None) -> Fix:
    m = suggest_max_norm(run, th, before_step)
    if m is None:
        return Fix(FixKind.CLIPPING, "Clip the total gradient norm between backward() and step()",
                   "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")
    return Fix(FixKind.CLIPPING,
               f"Clip the total gradient norm at {sig(m)} (the {th.clip_percentile:.0f}th percentile of the "
               f"healthy early steps) between backward() and step()",
               f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={sig(m)})\n"
               f"optimizer.step()")


def norm_fix(run: Run, names: tuple[str, ...] | list[str], why: str, th: Thresholds) -> Fix | None:
    las = named(run, names, th)
    if not las:
        return None
    lines = [f"# after {module_path(la.name)}, before its activation:\n{norm_layer(run, la)}" for la in las]
    return Fix(FixKind.BATCHNORM, f"Add a normalization layer after {list_names([la.name for la in las], th)}: "
                                  f"{why}", "\n".join(lines))


def init_fix(run: Run, names: tuple[str, ...] | list[str], why: str, th: Thresholds,
             act: str | None = None) -> Fix | None:
    las = named(run, names, th)
    if not las:
        return None
    lines: list[str] = []
    for la in las:
        lines += init_lines(run, la, act)
    return Fix(FixKind.INIT, f"Re-initialize {list_names(list(names), th)} to match the activation: {why}",
               "with torch.no_grad():\n" + "\n".join("    " + ln for ln in lines))


def hidden_layers(run: Run) -> list[LayerInfo]:
    """Weighted layers but the head (all of them when there is only one)."""
    w = [run.layers[i] for i, _ in weighted_layers(run)]
    return w[:-1] if len(w) > 1 else w
