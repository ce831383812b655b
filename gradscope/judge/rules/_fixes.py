"""Helpers shared by the rule families' fixes: names, numbers and the snippets several fixes build.

Each family's fixes live next to its rules (``rules/<family>.py``); what more than one family writes — a
learning-rate change, clipping, a normalization layer, a re-initialization — is built here once. Snippets
assume ``import torch``, ``from torch import nn``, the model bound to ``model`` and the optimizer to
``optimizer``; the numbers in them come from the run and from ``Thresholds`` fields (``fix_*``,
``clip_percentile``).

Snippets are real Python (they compile, no ``…`` placeholders) and run against the model as it is: a layer is
changed by assigning to its access path (``model.fc1 = nn.Sequential(model.fc1, nn.BatchNorm1d(64))``). Every
string from the log (layer names and types, activation names) is either checked to be a plain access path
(``is_plain_path``), mapped through a fixed table, or written as a ``repr()`` string literal: a crafted log
cannot put code into a snippet.
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.judge.findings import Fix, FixKind
from gradscope.judge.rules._common import (
    current_lr,
    early_reference,
    is_plain_path,
    label,
    module_path,
    nanmedian,
    output_layer,
    weighted_layers,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import RELU_FAMILY, LayerInfo

_SEQUENCE_TYPES = ("attention", "transformer", "lstm", "gru", "rnn", "embedding")
_TUPLE_OUTPUT = ("lstm", "gru", "rnn", "multiheadattention")   # layers whose forward returns a tuple


def sig(x: float, digits: int = 2) -> str:
    """A value rounded for a snippet: 2 significant digits, Python-literal form."""
    if x == 0 or not math.isfinite(x):
        return repr(float(x))
    r = float(f"{x:.{digits}g}")
    return repr(int(r)) if r == int(r) and abs(r) < 1e6 and abs(r) >= 1 else repr(r)


def suggest_max_norm(run: Run, th: Thresholds, before_step: int | None = None) -> float | None:
    """A ``clip_grad_norm_`` max_norm: the ``clip_percentile`` of the total gradient norm on the healthy steps.

    Healthy steps are those before ``before_step`` (where trouble began) whose norm stays within
    √``exploding_growth`` (10× by default) of the early level (``early_reference``, the run before any blow-up
    inside the early window) — the run's normal range, without the start of the blow-up. None when no step
    qualifies: a norm taken from already-exploded steps would be no clip at all."""
    steps, vals = run.all_steps, run.all_grad_norm
    if vals.size == 0:
        steps, vals = run.steps, run.grad_norm
    ok = np.isfinite(vals) & (vals > 0)
    if ok.sum() == 0:
        return None
    steps, vals = steps[ok], vals[ok]
    ref = early_reference(vals, th)
    cand = vals[steps < before_step] if before_step is not None else vals
    healthy = cand[cand <= ref * math.sqrt(th.exploding_growth)]
    if healthy.size == 0:
        return None
    p = float(np.percentile(healthy, th.clip_percentile))
    return float(f"{p:.2g}") if p > 0 else None


def layer_info(run: Run, name: str) -> LayerInfo | None:
    return next((la for la in run.layers if la.name == name), None)


def _param_names(run: Run, la: LayerInfo) -> set[str]:
    return set(la.params) | {p.name for p in run.params if p.layer == la.name}


def param_expr(run: Run, la: LayerInfo, attr: str) -> str | None:
    """Expression for the parameter ``attr`` ("weight", "bias", or the main weight's own attribute) of ``la``,
    or None when the layer has none. Plain names give ``model.fc1.weight``; anything else goes through
    ``model.get_parameter('...')`` with the name as a string literal."""
    if attr == "weight":
        full = la.weight
        if full is None:
            return None
    else:
        full = f"{la.name}.{attr}" if la.name else attr
        if full not in _param_names(run, la):
            return None
    owner, _, leaf = full.rpartition(".")
    if owner == la.name and is_plain_path(la.name) and is_plain_path(leaf) and not leaf.isdigit():
        return f"{module_path(la.name)}.{leaf}"
    return f"model.get_parameter({full!r})"


def units(run: Run, la: LayerInfo) -> int | None:
    """Output units of a layer: the recorded per-unit count (features of a Linear, channels of a convolution,
    the hidden size of a recurrent layer), else a Linear's fan_out. Never a convolution's fan_out (channels ×
    kernel area) or a GRU/LSTM's stacked gate rows."""
    u = run.layer_stats.get("units")
    if u is not None and u.size:
        i = run.layers.index(la)
        m = float(nanmedian(u[:, i]))
        if np.isfinite(m) and m > 0:
            return int(m)
    return la.fan_out if la.type.lower() == "linear" else None


def _conv_dims(la: LayerInfo) -> str | None:
    t = la.type.lower()
    return t[-2:] if t.startswith("conv") and t[-2:] in ("1d", "2d", "3d") else None


def norm_layer(run: Run, la: LayerInfo) -> str | None:
    """Code for the normalization layer of ``la``'s output: BatchNorm{1,2,3}d for convolutions, LayerNorm in
    sequence models, BatchNorm1d otherwise; None when the number of units is unknown."""
    n = units(run, la)
    if not n:
        return None
    dims = _conv_dims(la)
    if dims is not None:
        return f"nn.BatchNorm{dims}({n}, device=device)"
    if any(any(k in x.type.lower() for k in _SEQUENCE_TYPES) for x in run.layers):
        return f"nn.LayerNorm({n}, device=device)"
    return f"nn.BatchNorm1d({n}, device=device)"


def wrappable(la: LayerInfo) -> bool:
    """``la`` can be replaced by ``nn.Sequential(la, ...)`` in code: a plain access path, and a layer whose
    output is one tensor (recurrent layers and attention return tuples)."""
    t = la.type.lower()
    return bool(la.name) and is_plain_path(la.name) and not any(k in t for k in _TUPLE_OUTPUT)


DEVICE_LINE = "device = next(model.parameters()).device"
REBUILD_OPTIMIZER = "# then re-create the optimizer: it does not hold the new layers' parameters"


def wrap_lines(la: LayerInfo, new: str, *, before: bool = False) -> list[str]:
    """``model.fc1 = nn.Sequential(model.fc1, <new>)`` (``before``: the new module first), or a comment naming
    the layer by a string literal when it cannot be replaced in code."""
    path = module_path(la.name)
    if not wrappable(la):
        return [f"# wrap the layer {la.name!r} in nn.Sequential, with {new.replace(', device=device', '')} "
                f"{'before' if before else 'after'} it"]
    inner = f"{new}, {path}" if before else f"{path}, {new}"
    return [f"{path} = nn.Sequential({inner})"]


_INIT_NONLINEARITY = {"tanh": "tanh", "sigmoid": "sigmoid"}


def init_lines(run: Run, la: LayerInfo, act: str | None = None) -> list[str]:
    """``nn.init`` calls matching the activation after ``la`` (He, Glorot with gain, LeCun for SELU)."""
    w = param_expr(run, la, "weight")
    if w is None or "norm" in la.type.lower():
        return []      # a normalization layer's weight is a gain (ones), not a matrix to He/Glorot-initialize
    a = (act if act is not None else la.act or "").lower()
    if a == "selu":
        lines = [f'nn.init.kaiming_normal_({w}, nonlinearity="linear")  # LeCun normal for SELU']
    elif a == "leaky_relu":
        lines = [f'nn.init.kaiming_normal_({w}, a=0.01, nonlinearity="leaky_relu")']
    elif a in RELU_FAMILY:
        lines = [f'nn.init.kaiming_normal_({w}, nonlinearity="relu")']
    else:
        nl = _INIT_NONLINEARITY.get(a, "linear")    # a dict lookup: the log's string is never pasted
        lines = [f'nn.init.xavier_normal_({w}, gain=nn.init.calculate_gain("{nl}"))']
    b = param_expr(run, la, "bias")
    if b is not None:
        lines.append(f"nn.init.zeros_({b})")
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
    """Set the learning rate in place (every param group), which keeps the optimizer's state and its other
    settings (momentum, betas, weight decay) as they are."""
    lr = current_lr(run)
    if new_lr is None and lr is not None:
        new_lr = lr * factor
    if new_lr is not None:
        was = f" (was {sig(lr, 2)})" if lr is not None else ""
        return Fix(FixKind.LEARNING_RATE, f"Set the learning rate to {sig(new_lr, 1)}{was}: {why}",
                   f"for group in optimizer.param_groups:\n    group[\"lr\"] = {sig(new_lr, 1)}")
    return Fix(FixKind.LEARNING_RATE, f"Multiply the learning rate by {sig(factor, 1)}: {why}",
               f"for group in optimizer.param_groups:\n    group[\"lr\"] *= {sig(factor, 1)}")


def user_clip_norm(run: Run) -> float | None:
    """The ``max_norm`` the user already clips at: the largest total norm the optimizer stepped with, when
    clipping is active (``Run.clipping``); None otherwise."""
    if not run.clipping:
        return None
    c = np.asarray(run.clip_norm, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    return float(f"{float(np.max(c)):.2g}") if c.size else None


def clip_fix(run: Run, th: Thresholds, before_step: int | None) -> Fix:
    m = suggest_max_norm(run, th, before_step)
    where = "# between loss.backward() and optimizer.step():\n"
    have = user_clip_norm(run)
    if have is not None:
        if m is not None and m < have:
            return Fix(FixKind.CLIPPING,
                       f"Lower the gradient clipping norm from {sig(have)} to {sig(m)} (the {th.clip_percentile:.0f}th "
                       f"percentile of the healthy early steps)",
                       where + f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={sig(m)})"
                       f"  # was {sig(have)}")
        return Fix(FixKind.CLIPPING,
                   f"Gradients are already clipped at {sig(have)}: clipping more tightly than the healthy steps' norm "
                   f"would only slow training; the learning rate or the model is where to act",
                   f"# already: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={sig(have)})")
    if m is None:
        why = (" (no recorded step before the trouble had a healthy norm to take it from: start at 1.0)"
               if np.isfinite(run.all_grad_norm).any() or np.isfinite(run.grad_norm).any() else "")
        return Fix(FixKind.CLIPPING, f"Clip the total gradient norm between backward() and step(){why}",
                   where + "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")
    return Fix(FixKind.CLIPPING,
               f"Clip the total gradient norm at {sig(m)} (the {th.clip_percentile:.0f}th percentile of the "
               f"healthy early steps) between backward() and step()",
               where + f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={sig(m)})")


def _normalized(run: Run, la: LayerInfo) -> bool:
    """The next watched layer after ``la`` is a normalization layer (BatchNorm/LayerNorm/GroupNorm): its output
    is normalized already."""
    i = run.layers.index(la)
    nxt = run.layers[i + 1] if i + 1 < len(run.layers) else None
    return nxt is not None and "norm" in nxt.type.lower()


def norm_fix(run: Run, names: tuple[str, ...] | list[str], why: str, th: Thresholds) -> Fix | None:
    """A normalization layer on each named layer's output (before the activation that follows it); not on the
    model's head when other layers are named (normalized logits cap the classifier's confidence)."""
    head = output_layer(run)
    # Not on a normalization layer, nor on a layer whose output already goes through one.
    cands = [la for la in named(run, names, th) if "norm" not in la.type.lower() and not _normalized(run, la)]
    if len(cands) > 1:
        cands = [la for la in cands if head is None or la is not run.layers[head]]
    las = [(la, n) for la in cands if (n := norm_layer(run, la)) is not None]
    if not las:
        return None
    lines = [DEVICE_LINE]
    for la, n in las:
        lines += wrap_lines(la, n)
    lines.append(REBUILD_OPTIMIZER)
    return Fix(FixKind.BATCHNORM, f"Add a normalization layer after {list_names([la.name for la, _ in las], th)}, "
                                  f"before its activation: {why}", "\n".join(lines))


def init_fix(run: Run, names: tuple[str, ...] | list[str], why: str, th: Thresholds,
             act: str | None = None) -> Fix | None:
    lines: list[str] = []
    done: list[str] = []
    for la in named(run, names, th):
        got = init_lines(run, la, act)
        lines += got
        if got:
            done.append(la.name)
    if not lines:
        return None
    return Fix(FixKind.INIT, f"Re-initialize {list_names(done, th)} to match the activation: {why}",
               "with torch.no_grad():\n" + "\n".join("    " + ln for ln in lines))


_ACTIVATION_MODULES = {"tanh": "nn.Tanh", "sigmoid": "nn.Sigmoid", "hardtanh": "nn.Hardtanh",
                       "softsign": "nn.Softsign", "hardsigmoid": "nn.Hardsigmoid", "relu": "nn.ReLU",
                       "relu6": "nn.ReLU6"}


def swap_activation(acts: set[str] | list[str], new: str, *, keep_output: bool) -> str:
    """Code that replaces every activation module of the given kinds (names from the log, mapped through a
    fixed table, never pasted) with ``new``; ``keep_output`` leaves the model's last module alone (an output
    sigmoid is meant to saturate). An activation called in forward() (``torch.tanh``, ``F.relu``) is not a
    module: the comment says to edit it there."""
    kinds = sorted({_ACTIVATION_MODULES[a] for a in acts if a in _ACTIVATION_MODULES})
    if not kinds:
        return ""
    types = kinds[0] if len(kinds) == 1 else "(" + ", ".join(kinds) + ")"
    lines = ["# activations called in forward() (torch.tanh, F.relu and the like) need the same edit there"]
    cond = f"isinstance(child, {types})"
    if keep_output:
        lines.append("output = list(model.modules())[-1]   # an output activation stays as it is")
        cond += " and child is not output"
    lines += ["for parent in list(model.modules()):",
              "    for name, child in parent.named_children():",
              f"        if {cond}:",
              f"            setattr(parent, name, {new})"]
    return "\n".join(lines)


def resize_lines(run: Run, la: LayerInfo, width: int) -> list[str] | None:
    """Code that gives the Linear ``la`` ``width`` output units and the Linear that reads its output as many
    inputs, or None when that is not a plain pair of Linear layers (then a fix describes it in words)."""
    i = run.layers.index(la)
    nxt = run.layers[i + 1] if i + 1 < len(run.layers) else None
    if (la.type != "Linear" or nxt is None or nxt.type != "Linear" or not la.fan_in or not nxt.fan_out
            or nxt.fan_in != la.fan_out or not (is_plain_path(la.name) and is_plain_path(nxt.name))
            or not la.name or not nxt.name):
        return None

    def linear(x: LayerInfo, fan_in: int, fan_out: int) -> str:
        bias = "" if param_expr(run, x, "bias") is not None else ", bias=False"
        return f"{module_path(x.name)} = nn.Linear({fan_in}, {fan_out}{bias}, device=device)"

    return [DEVICE_LINE, linear(la, la.fan_in, width), linear(nxt, width, nxt.fan_out),
            "# then re-create the optimizer: it holds the old layers' parameters"]


def hidden_layers(run: Run) -> list[LayerInfo]:
    """Weighted layers but the head (all of them when there is only one)."""
    w = [run.layers[i] for i, _ in weighted_layers(run)]
    return w[:-1] if len(w) > 1 else w
