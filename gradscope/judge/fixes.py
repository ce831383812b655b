"""Finding → fixes. The wording and the code snippets live here, not in the rules.

Each fix names the user's layers (``model.fc2``, ``model.encoder[0]``) and carries values derived from the run:
the clipping norm from the observed total gradient norms, the early-stopping point from the validation loss,
a learning rate scaled from the observed update/weight ratio. Snippets assume ``import torch``,
``from torch import nn``, the model bound to ``model`` and the optimizer to ``optimizer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from gradscope.judge.findings import Code, Finding, Fix, FixKind
from gradscope.judge.rules._common import (
    current_lr,
    early_count,
    is_adaptive,
    label,
    module_path,
    nanmedian,
    optimizer_hparam,
    optimizer_name,
    weighted_layers,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import RELU_FAMILY, SATURATING_ACTIVATIONS, LayerInfo

LR_BACKOFF = 0.1
"""Learning-rate reduction suggested against instability: one decade (learning rates are searched on a log
scale)."""

WEIGHT_DECAY_SGD = 5e-4
"""Weight decay suggested for SGD-like optimizers when none is set (the common ResNet/CIFAR value)."""

WEIGHT_DECAY_ADAMW = 1e-2
"""Weight decay suggested for AdamW when none is set (PyTorch's AdamW default)."""

WEIGHT_DECAY_STEP_UP = 10.0
"""When weight decay is already set, the suggestion raises it by one decade."""

DROPOUT_P = 0.3
"""Dropout probability suggested after hidden layers (0.2–0.5 is the usual range)."""

WIDTH_FACTOR = 2
"""Width multiplier suggested for a layer when the model underfits (halved when it overfits)."""

MAX_LAYERS_IN_SNIPPET = 4
"""Snippets list at most this many layers; the summary says how many more."""

_SEQUENCE_TYPES = ("attention", "transformer", "lstm", "gru", "rnn", "embedding")


# ---------------------------------------------------------------- names and numbers

def _sig(x: float, digits: int = 2) -> str:
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


def _layer(run: Run, name: str) -> LayerInfo | None:
    return next((la for la in run.layers if la.name == name), None)


def _has_bias(run: Run, la: LayerInfo) -> bool:
    return any(p.endswith("bias") for p in la.params) or any(p.name == f"{la.name}.bias" for p in run.params)


def _units(run: Run, la: LayerInfo) -> int | None:
    u = run.layer_stats.get("units")
    if u is not None and u.size:
        i = run.layers.index(la)
        m = float(nanmedian(u[:, i]))
        if np.isfinite(m) and m > 0:
            return int(m)
    return la.fan_out if la.type.lower() == "linear" else None


def _norm_layer(run: Run, la: LayerInfo) -> str:
    n = _units(run, la)
    size = str(n) if n else "num_features"
    t = la.type.lower()
    if t.startswith("conv") and t[-2:] in ("1d", "2d", "3d"):
        return f"nn.BatchNorm{t[-2:]}({size})"
    if any(any(k in x.type.lower() for k in _SEQUENCE_TYPES) for x in run.layers):
        return f"nn.LayerNorm({size})"
    return f"nn.BatchNorm1d({size})"


def _init_lines(run: Run, la: LayerInfo, act: str | None = None) -> list[str]:
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
    if _has_bias(run, la):
        lines.append(f"nn.init.zeros_({path}.bias)")
    return lines


def _named(run: Run, names: tuple[str, ...] | list[str]) -> list[LayerInfo]:
    out = [la for n in names if (la := _layer(run, n)) is not None]
    return out[:MAX_LAYERS_IN_SNIPPET]


def _more(names: tuple[str, ...] | list[str]) -> str:
    extra = len(names) - MAX_LAYERS_IN_SNIPPET
    return f" (and {extra} more)" if extra > 0 else ""


def _list(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(label(n) for n in names[:MAX_LAYERS_IN_SNIPPET]) + _more(names)


def _lr_fix(run: Run, factor: float, why: str, new_lr: float | None = None) -> Fix:
    lr = current_lr(run)
    if new_lr is None and lr is not None:
        new_lr = lr * factor
    if new_lr is not None:
        name = optimizer_name(run)
        if name and name.isidentifier():
            code = f"optimizer = torch.optim.{name}(model.parameters(), lr={_sig(new_lr, 1)})"
        else:
            code = f"for group in optimizer.param_groups:\n    group[\"lr\"] = {_sig(new_lr, 1)}"
        was = f" (was {_sig(lr, 2)})" if lr is not None else ""
        return Fix(FixKind.LEARNING_RATE, f"Set the learning rate to {_sig(new_lr, 1)}{was}: {why}", code)
    return Fix(FixKind.LEARNING_RATE, f"Multiply the learning rate by {_sig(factor, 1)}: {why}",
               f"for group in optimizer.param_groups:\n    group[\"lr\"] *= {_sig(factor, 1)}")


def _clip_fix(run: Run, th: Thresholds, before_step: int | None) -> Fix:
    m = suggest_max_norm(run, th, before_step)
    if m is None:
        return Fix(FixKind.CLIPPING, "Clip the total gradient norm between backward() and step()",
                   "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")
    return Fix(FixKind.CLIPPING,
               f"Clip the total gradient norm at {_sig(m)} (the {th.clip_percentile:.0f}th percentile of the "
               f"healthy early steps) between backward() and step()",
               f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={_sig(m)})\n"
               f"optimizer.step()")


def _norm_fix(run: Run, names: tuple[str, ...] | list[str], why: str) -> Fix | None:
    las = _named(run, names)
    if not las:
        return None
    lines = [f"# after {module_path(la.name)}, before its activation:\n{_norm_layer(run, la)}" for la in las]
    return Fix(FixKind.BATCHNORM, f"Add a normalization layer after {_list([la.name for la in las])}: {why}",
               "\n".join(lines))


def _init_fix(run: Run, names: tuple[str, ...] | list[str], why: str, act: str | None = None) -> Fix | None:
    las = _named(run, names)
    if not las:
        return None
    lines: list[str] = []
    for la in las:
        lines += _init_lines(run, la, act)
    return Fix(FixKind.INIT, f"Re-initialize {_list(list(names))} to match the activation: {why}",
               "with torch.no_grad():\n" + "\n".join("    " + ln for ln in lines))


def _hidden(run: Run) -> list[LayerInfo]:
    w = [run.layers[i] for i, _ in weighted_layers(run)]
    return w[:-1] if len(w) > 1 else w


# ---------------------------------------------------------------- per code

def _vanishing(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    acts = set(f.evidence.get("activations", ()))
    fixes: list[Fix | None] = []
    if acts & SATURATING_ACTIVATIONS:
        sat = sorted(acts & SATURATING_ACTIVATIONS)
        fixes.append(Fix(FixKind.ACTIVATION,
                         f"Use ReLU (or GELU) instead of {'/'.join(sat)} in the hidden layers: its derivative is 1 "
                         f"for positive inputs, so gradients do not shrink layer by layer",
                         f"nn.ReLU()  # in place of nn.{'Tanh' if 'tanh' in sat else 'Sigmoid'}() between hidden "
                         f"layers"))
    fixes.append(_init_fix(run, f.layers, "He for ReLU-like, Glorot for tanh/sigmoid keeps gradient variance "
                                          "constant across depth"))
    fixes.append(_norm_fix(run, f.layers, "re-centres and re-scales each layer's signal"))
    if f.layers:
        p = module_path(f.layers[0])
        fixes.append(Fix(FixKind.RESIDUAL, "Add residual (skip) connections so the gradient has a path that "
                         "bypasses the deep stack",
                         f"# in forward():\nx = x + {p}(x)  # when input and output shapes match"))
    return fixes


def _exploding(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    first = f.evidence.get("first_step") or (f.steps[0] if f.steps else None)
    fixes: list[Fix | None] = [_clip_fix(run, th, first if isinstance(first, int) else None),
                               _lr_fix(run, LR_BACKOFF, "smaller steps keep the weights from growing")]
    fixes.append(_norm_fix(run, f.layers, "bounds the signal each layer passes on"))
    if "activation_depth_growth" in f.evidence or "median_depth_ratio" in f.evidence:
        fixes.append(_init_fix(run, f.layers, "the per-layer gain compounds with depth"))
    return fixes


def _dead(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    las = _named(run, f.layers)
    paths = ", ".join(module_path(la.name) for la in las)
    return [
        Fix(FixKind.ACTIVATION, f"Replace the ReLU after {_list(list(f.layers))} with LeakyReLU: it keeps a small "
            f"gradient for negative inputs, so units can recover",
            f"nn.LeakyReLU(0.01)  # in place of nn.ReLU() after {paths}\n"
            f"# or, in forward(): x = F.leaky_relu(x, 0.01)"),
        _init_fix(run, f.layers, "He init with zero biases starts half of the units active", act="relu"),
        _lr_fix(run, LR_BACKOFF, "large updates push units into the never-active region"),
        _norm_fix(run, f.layers, "keeps each unit's pre-activation centred, so it fires on part of the batch"),
    ]


def _saturation(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    las = _named(run, f.layers)
    acts = sorted({(la.act or "").lower() for la in las})
    return [
        _init_fix(run, f.layers, "Glorot init keeps pre-activations in the linear range of " + "/".join(acts)),
        _norm_fix(run, f.layers, "keeps pre-activations near 0, where the derivative is largest"),
        Fix(FixKind.ACTIVATION, "Use ReLU (or GELU) in hidden layers: it does not saturate for positive inputs",
            f"nn.ReLU()  # in place of the {'/'.join(acts)} after {_list([la.name for la in las])}"),
        _lr_fix(run, LR_BACKOFF, "large updates drive pre-activations into the flat tails"),
    ]


def _divergence(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    first = f.evidence.get("first_step")
    fixes: list[Fix | None] = [_lr_fix(run, LR_BACKOFF, "the usual cause of a loss that blows up"),
                               _clip_fix(run, th, first if isinstance(first, int) else None)]
    return fixes


def _overfitting(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    fixes: list[Fix | None] = []
    best = f.evidence.get("best_step")
    if best is not None:
        ev, n = f.evidence.get("best_eval"), f.evidence.get("n_evals")
        fixes.append(Fix(FixKind.EARLY_STOPPING,
                         f"Stop at step {best} (evaluation {ev} of {n}), where validation loss was lowest "
                         f"({f.evidence.get('best_val_loss', float('nan')):.4g}); keep that checkpoint",
                         f"best, bad, patience = float(\"inf\"), 0, {th.overfit_min_after + 1}\n"
                         f"# after each validation:\n"
                         f"if val_loss < best:\n    best, bad = val_loss, 0\n"
                         f"    torch.save(model.state_dict(), \"best.pt\")\n"
                         f"else:\n    bad += 1\n    if bad >= patience:\n        break  # best was at step {best}"))
    else:
        fixes.append(Fix(FixKind.EARLY_STOPPING, "Keep the checkpoint with the best validation score and stop "
                         "when it has not improved for a few evaluations",
                         "if val_acc > best:\n    best = val_acc\n    torch.save(model.state_dict(), \"best.pt\")"))
    wd = optimizer_hparam(run, "weight_decay")
    adaptive = is_adaptive(run)
    if wd is not None and wd > 0:
        new_wd = wd * WEIGHT_DECAY_STEP_UP
    else:
        new_wd = WEIGHT_DECAY_ADAMW if adaptive else WEIGHT_DECAY_SGD
    lr = current_lr(run)
    lr_txt = f"lr={_sig(lr, 2)}, " if lr is not None else ""
    if adaptive:
        code = f"optimizer = torch.optim.AdamW(model.parameters(), {lr_txt}weight_decay={_sig(new_wd, 1)})"
    else:
        code = (f"optimizer = torch.optim.SGD(model.parameters(), {lr_txt}momentum=0.9, "
                f"weight_decay={_sig(new_wd, 1)})")
    fixes.append(Fix(FixKind.REGULARIZATION, f"Add weight decay {_sig(new_wd, 1)} (L2) to shrink the weights "
                     f"towards simpler functions", code))
    hidden = [la.name for la in _hidden(run)]
    if hidden:
        fixes.append(Fix(FixKind.REGULARIZATION, f"Add dropout (p={DROPOUT_P}) after {_list(hidden)}",
                         "\n".join(f"nn.Dropout(p={DROPOUT_P})  # after {module_path(n)}'s activation"
                                   for n in hidden[:MAX_LAYERS_IN_SNIPPET])))
    conv = any(la.type.lower().startswith("conv2d") for la in run.layers)
    fixes.append(Fix(FixKind.DATA, "Use more training data or augment it" + (" (random crops and flips)" if conv
                                                                             else ""),
                     "transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), "
                     "...])" if conv else ""))
    if hidden:
        la = _layer(run, hidden[0])
        if la is not None and la.fan_out:
            fixes.append(Fix(FixKind.CAPACITY, f"Or shrink the model: halve the width of {label(la.name)}",
                             f"# {module_path(la.name)}: {la.fan_out} → {max(1, la.fan_out // WIDTH_FACTOR)} units"))
    return fixes


def _underfitting(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    fixes: list[Fix | None] = []
    hidden = _hidden(run) if run.header is not None else []
    la = hidden[0] if hidden else None
    if la is not None and la.fan_out:
        fixes.append(Fix(FixKind.CAPACITY, f"Use a bigger model: widen {label(la.name)} ({la.fan_out} → "
                         f"{la.fan_out * WIDTH_FACTOR} units) or add a hidden layer",
                         f"# {module_path(la.name)}: {la.type}(..., {la.fan_out}) → "
                         f"{la.type}(..., {la.fan_out * WIDTH_FACTOR})"))
    else:
        fixes.append(Fix(FixKind.CAPACITY, "Use a bigger or deeper model (more units, more layers)", ""))
    fixes.append(Fix(FixKind.TRAIN_LONGER, "Train longer (more epochs) and check that the training loss is "
                     "still falling at the end", "num_epochs *= 2"))
    lr = current_lr(run)
    was = f" (was {_sig(lr, 2)})" if lr is not None else ""
    fixes.append(Fix(FixKind.LEARNING_RATE, f"Tune the learning rate{was} with a range test (a few values on a "
                     f"log scale around it): too low and the loss barely moves", ""))
    return fixes


def _poor_init(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    layers = f.evidence.get("layers", {})
    las = _named(run, f.layers)
    lines: list[str] = []
    for la in las:
        info = layers.get(la.name, {}) if isinstance(layers, dict) else {}
        act = info.get("nonlinearity") if isinstance(info, dict) else None
        lines += _init_lines(run, la, None if act in (None, "linear") else str(act))
    return [
        Fix(FixKind.INIT, f"Re-initialize {_list(list(f.layers))} with the scheme the activation needs "
            f"(He for ReLU, Glorot for tanh/sigmoid/linear, LeCun for SELU)",
            "with torch.no_grad():\n" + "\n".join("    " + ln for ln in lines)),
        _norm_fix(run, f.layers, "normalization makes the net far less sensitive to the initial scale"),
    ]


def _unnormalized(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    mean, std = f.evidence.get("mean"), f.evidence.get("std")
    first = _layer(run, f.layers[0]) if f.layers else None
    image = first is not None and first.type.lower().startswith("conv")
    m = _sig(float(mean), 3) if isinstance(mean, int | float) else "mean"
    s = _sig(float(std), 3) if isinstance(std, int | float) else "std"
    if image:
        code = (f"# per channel, computed on the training set (overall mean {m}, std {s} observed):\n"
                f"transforms.Normalize(mean=channel_means, std=channel_stds)")
    else:
        code = ("mean, std = X_train.mean(0), X_train.std(0).clamp_min(1e-8)   # training set only\n"
                "X_train, X_val = (X_train - mean) / std, (X_val - mean) / std")
    fixes: list[Fix | None] = [Fix(FixKind.NORMALIZATION,
                                   f"Standardize the inputs to zero mean and unit variance (observed mean {m}, "
                                   f"std {s}) with statistics of the training set", code)]
    if first is not None:
        fixes.append(Fix(FixKind.BATCHNORM, "Or let the model normalize its input: a normalization layer first",
                         f"nn.{'BatchNorm2d' if image else 'BatchNorm1d'}(num_features)  # before "
                         f"{module_path(first.name)}"))
    return fixes


def _unstable(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    first = f.evidence.get("first_step")
    return [_lr_fix(run, LR_BACKOFF, "spikes and oscillation mean steps overshoot"),
            _clip_fix(run, th, first if isinstance(first, int) else None)]


def _learning_rate(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    ratio = f.evidence.get("median_update_ratio")
    target = f.evidence.get("target_ratio")
    factor = f.evidence.get("lr_factor")
    suggested = f.evidence.get("suggested_lr")
    why = (f"scales the update/weight ratio from {_sig(float(ratio))} to about {_sig(float(target))}"
           if isinstance(ratio, float) and isinstance(target, float) else "brings updates into the usual band")
    fixes: list[Fix | None] = [_lr_fix(run, float(factor) if isinstance(factor, float) else 1.0, why,
                                       float(suggested) if isinstance(suggested, float) else None)]
    if f.evidence.get("direction") == "low":
        fixes.append(Fix(FixKind.TRAIN_LONGER, "If the learning rate must stay, train much longer", ""))
    return fixes


_BUILDERS: dict[Code, Callable[[Finding, Run, Thresholds], list[Fix | None]]] = {
    Code.VANISHING_GRADIENTS: _vanishing,
    Code.EXPLODING_GRADIENTS: _exploding,
    Code.DEAD_RELU: _dead,
    Code.SATURATION: _saturation,
    Code.DIVERGENCE: _divergence,
    Code.OVERFITTING: _overfitting,
    Code.UNDERFITTING: _underfitting,
    Code.POOR_INIT: _poor_init,
    Code.UNNORMALIZED_INPUT: _unnormalized,
    Code.UNSTABLE_LOSS: _unstable,
    Code.LEARNING_RATE: _learning_rate,
}


def fixes_for(finding: Finding, run: Run, thresholds: Thresholds | None = None) -> tuple[Fix, ...]:
    """The fixes for one finding, most direct first, naming the run's layers and values."""
    th = thresholds or Thresholds()
    build = _BUILDERS.get(finding.code)
    if build is None:
        return ()
    return tuple(fx for fx in build(finding, run, th) if fx is not None)
