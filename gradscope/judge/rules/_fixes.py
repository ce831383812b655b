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

What a snippet may do depends on the layer (issue 11.2): a module whose forward returns a tuple (LSTM/GRU/RNN,
``nn.MultiheadAttention``) is never wrapped in ``nn.Sequential`` nor put inside a residual — its output goes
through ``OnOutput``, which keeps the tuple, and it gets its own remedies (orthogonal recurrent weights, a gated
cell); widths are counted in units (hidden size, channels, ``embed_dim``), never in stacked gate rows, and a
fused query/key/value projection is never resized on its own; a layer inside a transformer block that already
has LayerNorm gets transformer advice (pre-LN, warmup, GPT-2 initialization), not another normalization layer.
What kind of layer it is comes from ``_layers.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gradscope.judge.findings import Fix, FixKind
from gradscope.judge.rules._common import (
    current_lr,
    early_reference,
    is_plain_path,
    label,
    module_path,
    output_layer,
)
from gradscope.judge.rules._layers import (
    RESIDUAL_PROJ,
    SEQUENCE_TYPES,
    TUPLE_OUTPUT,
    attention_named,
    block_names,
    block_norm_units,
    conv_dims,
    fused_qkv,
    hidden_layers,
    layer_info,
    next_layer,
    param_expr,
    param_path,
    param_shape,
    recurrent,
    transformer_block,
    units,
    wrappable,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from gradscope.store.schema import RELU_FAMILY, LayerInfo


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


def norm_layer(run: Run, la: LayerInfo) -> str | None:
    """Code for the normalization layer of ``la``'s output: BatchNorm{1,2,3}d for convolutions, LayerNorm in
    sequence models, BatchNorm1d otherwise; None when the number of units is unknown."""
    n = units(run, la)
    if not n:
        return None
    dims = conv_dims(la)
    if dims is not None:
        return f"nn.BatchNorm{dims}({n}, device=device)"
    if any(any(k in x.type.lower() for k in SEQUENCE_TYPES) for x in run.layers):
        return f"nn.LayerNorm({n}, device=device)"
    return f"nn.BatchNorm1d({n}, device=device)"



DEVICE_LINE = "device = next(model.parameters()).device"
REBUILD_OPTIMIZER = "# then re-create the optimizer: it does not hold the new layers' parameters"

ON_OUTPUT_CLASS = """class OnOutput(nn.Module):
    # applies `after` to a layer's first output and keeps the rest of its tuple ((h, c) of an LSTM)
    def __init__(self, inner, after):
        super().__init__()
        self.inner = inner
        self.after = after

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.after(out[0]), *out[1:])
        return self.after(out)
"""


def wrap_lines(la: LayerInfo, new: str, *, before: bool = False) -> list[str]:
    """``model.fc1 = nn.Sequential(model.fc1, <new>)`` (``before``: the new module first); for a recurrent layer
    (its forward returns a tuple) ``model.rnn = OnOutput(model.rnn, <new>)``, which needs ``ON_OUTPUT_CLASS``
    above it; else a comment naming the layer by a string literal when it cannot be replaced in code."""
    path = module_path(la.name)
    if recurrent(la) is not None and not before and la.name and is_plain_path(la.name):
        return [f"{path} = OnOutput({path}, {new})"]
    if not wrappable(la):
        what = new.replace(", device=device", "")
        if any(k in la.type.lower() for k in TUPLE_OUTPUT):
            return [f"# {la.name!r} returns a tuple: in forward(), apply {what} to its "
                    f"{'input' if before else 'first output'}"]
        return [f"# wrap the layer {la.name!r} in nn.Sequential, with {what} {'before' if before else 'after'} it"]
    inner = f"{new}, {path}" if before else f"{path}, {new}"
    return [f"{path} = nn.Sequential({inner})"]


def with_on_output(lines: list[str]) -> list[str]:
    """``lines`` with the ``OnOutput`` class defined first when they use it."""
    return [ON_OUTPUT_CLASS, *lines] if any("OnOutput(" in ln for ln in lines) else lines


_INIT_NONLINEARITY = {"tanh": "tanh", "sigmoid": "sigmoid"}


def init_lines(run: Run, la: LayerInfo, act: str | None = None, th: Thresholds | None = None) -> list[str]:
    """``nn.init`` calls matching the activation after ``la`` (He, Glorot with gain, LeCun for SELU); a recurrent
    layer's own scheme (``recurrent_init_lines``); GPT-2's in a transformer (``transformer_init_lines``)."""
    if recurrent(la) is not None:
        return recurrent_init_lines(run, la)
    if gpt2_init(run, la):
        return transformer_init_lines(run, la, th or Thresholds())
    w = param_expr(run, la, "weight")
    if w is None or "norm" in la.type.lower() or la.type == "Embedding":
        # a normalization layer's weight is a gain (ones), an embedding's rows are looked up: neither is a
        # matrix to He/Glorot-initialize
        return []
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


def gpt2_init(run: Run, la: LayerInfo) -> bool:
    """``la`` is initialized as GPT-2 does: a layer of a transformer block, or an embedding of a transformer."""
    return transformer_block(run, la) is not None or (la.type == "Embedding" and bool(block_names(run)))


def recurrent_init_lines(run: Run, la: LayerInfo) -> list[str]:
    """An LSTM/GRU/RNN's initialization, parameter by parameter as the header names them (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ..., ``_reverse``): Glorot for the input weights and orthogonal recurrent
    weights, one gate block at a time (a gate's rows, not the stacked 4·hidden of an LSTM); zero biases, and
    an LSTM's forget-gate bias at 1 (Jozefowicz et al. 2015) so the cell keeps its state at the start."""
    rec = recurrent(la)
    if rec is None:
        return []
    _, gates = rec
    lines: list[str] = []
    prefix = f"{la.name}." if la.name else ""
    for full in la.params:
        leaf = full[len(prefix):] if full.startswith(prefix) else full
        path = param_path(full)
        if leaf.startswith("weight_hr"):       # an LSTM's output projection: one matrix, not stacked gates
            lines.append(f"nn.init.xavier_uniform_({path})")
        for prefix_, init in (("weight_ih", "nn.init.xavier_uniform_({})"),
                              ("weight_hh", "nn.init.orthogonal_({})   # recurrent map with gain 1")):
            if leaf.startswith(prefix_):
                lines += ([f"for w in {path}.chunk({gates}):", "    " + init.format("w")] if gates > 1
                          else [init.format(path)])
        if leaf.startswith("bias"):
            lines.append(f"nn.init.zeros_({path})")
            if gates == 4 and leaf.startswith("bias_ih"):
                lines.append(f"{path}.chunk(4)[1].fill_(1.0)   # LSTM forget gate (gates i, f, g, o)")
    return lines


def transformer_init_lines(run: Run, la: LayerInfo, th: Thresholds) -> list[str]:
    """GPT-2's initialization of a transformer's layer: weights (and embeddings) N(0, σ²) with σ =
    ``fix_transformer_init_std``, the projections that write into the residual stream (``c_proj``, ``out_proj``,
    ``linear2``) with σ/√(2·n_layer), biases zero; normalization layers keep their ones and zeros."""
    if "norm" in la.type.lower():
        return []
    n_layer = max(1, len(block_names(run)))
    res_std = sig(th.fix_transformer_init_std / math.sqrt(2 * n_layer))
    lines: list[str] = []
    prefix = f"{la.name}." if la.name else ""
    for full in la.params:
        shape = param_shape(run, full)
        path = param_path(full)
        if (shape is not None and len(shape) < 2) or full.endswith("bias"):
            lines.append(f"nn.init.zeros_({path})")
            continue
        owner = (full[len(prefix):] if full.startswith(prefix) else full).rpartition(".")[0]
        last = (owner or la.name).split(".")[-1].lower()
        if last in RESIDUAL_PROJ:
            lines.append(f"nn.init.normal_({path}, std={res_std})   # residual projection: "
                         f"{sig(th.fix_transformer_init_std)}/sqrt(2*{n_layer})")
        else:
            lines.append(f"nn.init.normal_({path}, std={sig(th.fix_transformer_init_std)})")
    return lines


def named(run: Run, names: tuple[str, ...] | list[str], th: Thresholds) -> list[LayerInfo]:
    """The run's layers called ``names``, at most ``fix_max_code_layers`` of them (``left_out`` names the
    rest in the snippet)."""
    out = [la for n in names if (la := layer_info(run, n)) is not None]
    return out[:th.fix_max_code_layers]


def left_out(names: tuple[str, ...] | list[str], th: Thresholds) -> list[str]:
    """A comment line for a snippet that edits the first ``fix_max_code_layers`` of ``names``: the layers it
    leaves out, so that the user can repeat the edit for them (empty when none are)."""
    rest = list(names[th.fix_max_code_layers:])
    if not rest:
        return []
    return [f"# and the same for the other {len(rest)} layers: " + ", ".join(repr(n) for n in rest)]


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
    model's head when other layers are named (normalized logits cap the classifier's confidence). A recurrent
    layer gets LayerNorm on its output sequence through ``OnOutput`` (its (output, state) tuple is kept); layers
    inside transformer blocks get ``transformer_fix`` instead — the block has LayerNorm already."""
    head = output_layer(run)
    las0 = [la for la in named(run, names, th) if "norm" not in la.type.lower()]
    if block_names(run):
        in_block = [la for la in las0 if transformer_block(run, la) is not None]
        if in_block:
            return transformer_fix(run, [la.name for la in in_block], th)
        las0 = [la for la in las0 if la.type != "Embedding"]     # the blocks normalize what they read
    # Not on a normalization layer, nor on a layer whose output already goes through one.
    cands = [la for la in las0 if not _normalized(run, la)]
    if len(cands) > 1:
        cands = [la for la in cands if head is None or la is not run.layers[head]]
    las = [(la, n) for la in cands if (n := norm_layer(run, la)) is not None]
    if not las:
        return None
    lines = [DEVICE_LINE]
    for la, n in las:
        lines += wrap_lines(la, n)
    lines += left_out(list(names), th)
    lines.append(REBUILD_OPTIMIZER)
    return Fix(FixKind.BATCHNORM, f"Add a normalization layer after {list_names([la.name for la, _ in las], th)}, "
                                  f"before its activation: {why}", "\n".join(with_on_output(lines)))


def transformer_fix(run: Run, names: tuple[str, ...] | list[str], th: Thresholds) -> Fix:
    """What stabilizes a transformer whose blocks already normalize: pre-LN (the norm before attention and
    the MLP, so the residual path stays an identity; ``norm_first=True`` in ``nn.TransformerEncoderLayer``), a
    learning-rate warmup over ``fix_warmup_fraction`` of the run, and clipping — not another normalization layer
    after a projection."""
    norms = [la.name for la in run.layers if "norm" in la.type.lower()
             and any(la.name.startswith(b + ".") for b in block_names(run))]
    has_norm = f" (already normalized by {list_names(norms, th)})" if norms else ""
    where = list_names(list(names), th) if names else "the blocks"
    torch_layers = any(la.type == "MultiheadAttention" for la in run.layers)
    last = int(run.steps.max()) if run.steps.size else 0
    warm = max(1, round(th.fix_warmup_fraction * last))
    lines: list[str] = []
    if torch_layers:
        lines += ["# pre-LN: LayerNorm before attention and feed-forward, the residual path stays an identity",
                  "# (then give nn.TransformerEncoder a final norm: its norm= argument, nn.LayerNorm(d_model))",
                  "for m in model.modules():",
                  "    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):",
                  "        m.norm_first = True"]
    else:
        lines.append("# keep the blocks pre-LN, as GPT-2 is: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))")
    lines += [f"# warm the learning rate up over the first {warm} step{'s' if warm != 1 else ''} (scheduler.step() "
              f"after each optimizer.step()):",
              "def warmup(step):",
              f"    return min(1.0, (step + 1) / {warm})",
              "",
              "",
              "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)",
              "# and between loss.backward() and optimizer.step():",
              "# torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"]
    return Fix(FixKind.BATCHNORM, f"{where} sit in transformer blocks that normalize already{has_norm}: not "
                                  f"another LayerNorm after a projection, but pre-LN "
                                  f"(norm_first=True), a {warm}-step learning-rate warmup and gradient clipping",
               "\n".join(lines))


def init_fix(run: Run, names: tuple[str, ...] | list[str], why: str, th: Thresholds,
             act: str | Mapping[str, str | None] | None = None) -> Fix | None:
    """Re-initialization of the named layers: ``init_lines`` for each, and a summary that says which scheme —
    matching the activation, a recurrent layer's (orthogonal recurrent weights) or GPT-2's. ``act``: the
    activation to match for every layer, or per layer name (None: the one recorded after it)."""
    lines: list[str] = []
    done: list[LayerInfo] = []
    for la in named(run, names, th):
        got = init_lines(run, la, act.get(la.name) if isinstance(act, Mapping) else act, th)
        lines += got
        if got:
            done.append(la)
    if not lines:
        return None
    rec = [la.name for la in done if recurrent(la) is not None]
    tf = [la.name for la in done if recurrent(la) is None and gpt2_init(run, la)]
    rest = [la.name for la in done if la.name not in rec and la.name not in tf]
    parts = []
    if rest:
        parts.append(f"{list_names(rest, th)} to match the activation: {why}")
    if rec:
        parts.append(f"{list_names(rec, th)} for recurrence: Glorot input weights, orthogonal recurrent "
                     f"weights per gate, zero biases (LSTM forget gate 1), so the state neither fades nor grows "
                     f"through time")
    if tf:
        parts.append(f"{list_names(tf, th)} as GPT-2 does: N(0, {sig(th.fix_transformer_init_std)}²), the residual "
                     f"projections scaled by 1/sqrt(2·n_layer)")
    lines += left_out(list(names), th)
    return Fix(FixKind.INIT, "Re-initialize " + "; ".join(parts),
               "with torch.no_grad():\n" + "\n".join("    " + ln if ln else "" for ln in lines))


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


def _linear(run: Run, x: LayerInfo, fan_in: int, fan_out: int) -> str:
    bias = "" if param_expr(run, x, "bias") is not None else ", bias=False"
    return f"{module_path(x.name)} = nn.Linear({fan_in}, {fan_out}{bias}, device=device)"


def _linear_pair(run: Run, la: LayerInfo, width: int) -> list[str] | None:
    """``la`` and the Linear that reads its output, both rebuilt around ``width`` units; None unless that reader
    is certain enough: the next layer in the header, a Linear of the matching fan-in, under the same parent
    module (header order alone is not dataflow: a mixture-of-experts router is followed by an expert's first
    layer that never reads it)."""
    nxt = next_layer(run, la)
    if (la.type != "Linear" or nxt is None or nxt.type != "Linear" or not la.fan_in or not nxt.fan_out
            or nxt.fan_in != la.fan_out or not (is_plain_path(la.name) and is_plain_path(nxt.name))
            or not la.name or not nxt.name or la.name.rpartition(".")[0] != nxt.name.rpartition(".")[0]):
        return None
    return [_linear(run, la, la.fan_in, width), _linear(run, nxt, width, nxt.fan_out)]


def _recurrent_resize(run: Run, la: LayerInfo, width: int) -> list[str] | None:
    """A recurrent layer rebuilt with ``width`` hidden units (its other settings read from the old one) and the
    Linear that reads its output given as many inputs. Only for a one-directional layer without projection
    (its weight rows are exactly gates × hidden units) whose output no other recorded layer reads."""
    rec, u, nxt = recurrent(la), units(run, la), next_layer(run, la)
    if rec is None or not u or nxt is None or not la.name or not nxt.name:
        return None
    ctor, gates = rec
    i = run.layers.index(la)
    readers = [x for x in run.layers[i + 1:] if x.fan_in == u]
    if (la.fan_out != gates * u or nxt.type != "Linear" or nxt.fan_in != u or readers != [nxt] or not nxt.fan_out
            or not (is_plain_path(la.name) and is_plain_path(nxt.name))):
        return None
    extra = ", nonlinearity=old.nonlinearity" if ctor == "nn.RNN" else ""
    path = module_path(la.name)
    return [f"old = {path}",
            f"{path} = {ctor}(old.input_size, {width}, num_layers=old.num_layers, bias=old.bias, "
            f"batch_first=old.batch_first, dropout=old.dropout{extra}, device=device)",
            _linear(run, nxt, width, nxt.fan_out)]


def resize_lines(run: Run, la: LayerInfo, width: int) -> list[str] | None:
    """Code that gives the Linear ``la`` ``width`` output units (a recurrent layer ``width`` hidden units) and the
    Linear that reads its output as many inputs, or None when that is not such a plain pair (then a fix
    describes it in words)."""
    got = _recurrent_resize(run, la, width) if recurrent(la) is not None else _linear_pair(run, la, width)
    if got is None:
        return None
    return [DEVICE_LINE, *got, "# then re-create the optimizer: it holds the old layers' parameters"]


def width_fix(run: Run, th: Thresholds, *, grow: bool) -> Fix | None:
    """A capacity change by ``fix_width_factor``: widen (``grow``) or halve the first hidden layer, counted in
    its units (features, channels, hidden size). In a transformer, the model width (d_model / n_embd) and the
    feed-forward width instead: a fused query/key/value projection or an attention layer is never resized on
    its own (its output is split into heads)."""
    hidden = hidden_layers(run) if run.header is not None else []
    f = th.fix_width_factor
    if any(transformer_block(run, la) is not None for la in hidden):
        return _transformer_width_fix(run, th, grow=grow)
    la = hidden[0] if hidden else None
    width = units(run, la) if la is not None else None
    head = run.layers[i] if (i := output_layer(run)) is not None else None
    if grow and la is not None and la is head:
        return _hidden_layer_fix(run, la, th)
    outs = units(run, head) if head is not None else None
    neck = _bottleneck(run, [x for x in hidden if x is not head], outs) if grow else None
    if neck is not None:
        la, width = neck
    if la is None or not width:
        return Fix(FixKind.CAPACITY, "Use a bigger or deeper model (more units, more layers)", "") if grow else None
    new = width * f if grow else max(1, width // f)
    why = ""
    if neck is not None and outs:
        new = max(new, outs)
        why = f", narrower than the {outs} outputs it feeds: a bottleneck"
    what = "hidden_size " if recurrent(la) is not None else ""
    unit = "" if what else " units"
    code = "\n".join(resize_lines(run, la, new) or
                     [f"# {module_path(la.name)}: from {what}{width} to {new}{unit}, and the input of the layer "
                      f"that reads its output to match"])
    if grow:
        return Fix(FixKind.CAPACITY, f"Use a bigger model: widen {label(la.name)} ({what}{width} → {new}{unit}"
                                     f"{why}) or add a hidden layer", code)
    return Fix(FixKind.CAPACITY, f"Or shrink the model: halve the width of {label(la.name)} ({what}{width} → "
                                 f"{new}{unit})", code)


def _hidden_layer_fix(run: Run, la: LayerInfo, th: Thresholds) -> Fix:
    """The model's only weighted layer is its head: a linear model, which widening cannot help (its width is
    the number of outputs). Put a hidden layer in front of it, as wide as ``fix_width_factor`` × the larger of
    its input and output widths (at least 32)."""
    path = module_path(la.name)
    fi, fo = la.fan_in, units(run, la)
    if la.type.lower() != "linear" or not fi or not fo or not (la.name and is_plain_path(la.name)):
        return Fix(FixKind.CAPACITY, f"Use a bigger model: {label(la.name)} is the only weighted layer (a linear "
                                     f"model); add a hidden layer with a non-linearity before it", "")
    width = max(32, th.fix_width_factor * max(fi, fo))
    code = "\n".join([DEVICE_LINE,
                      f"{path} = nn.Sequential(nn.Linear({fi}, {width}, device=device), nn.ReLU(), "
                      f"nn.Linear({width}, {fo}, device=device))",
                      REBUILD_OPTIMIZER])
    return Fix(FixKind.CAPACITY, f"Use a bigger model: {label(la.name)} is the only weighted layer, so the model "
                                 f"is linear and widening it cannot help; add a hidden layer of {width} units with a "
                                 f"ReLU before the output", code)


def _bottleneck(run: Run, hidden: list[LayerInfo], outs: int | None) -> tuple[LayerInfo, int] | None:
    """The narrowest of the ``hidden`` layers when it is narrower than the model's ``outs`` outputs (a 2-unit
    layer before a 10-class head caps what any training can reach: the architecture alone shows it)."""
    widths = [(la, w) for la in hidden if (w := units(run, la))]
    if not outs or not widths:
        return None
    la, w = min(widths, key=lambda p: p[1])
    return (la, w) if w < outs else None


def _transformer_width_fix(run: Run, th: Thresholds, *, grow: bool) -> Fix:
    f = th.fix_width_factor
    blocks = block_names(run)
    d = next((n for b in blocks if (n := block_norm_units(run, b))), None)
    pairs: list[tuple[LayerInfo, int]] = []     # the first Linear of each block's feed-forward pair, its width
    for la in run.layers:
        b = transformer_block(run, la)
        nxt = next_layer(run, la)
        if (b is None or attention_named(la.name[len(b) + 1:]) or fused_qkv(la) or nxt is None
                or not nxt.name.startswith(b + ".") or attention_named(nxt.name[len(b) + 1:])):
            continue
        u = units(run, la)
        if u and (d is None or (la.fan_in == d and nxt.fan_out == d)) and _linear_pair(run, la, u) is not None:
            pairs.append((la, u))
    qkv = [la.name for la in run.layers if fused_qkv(la) and transformer_block(run, la) is not None]
    new_d = (d * f if grow else max(1, d // f)) if d else None
    model_w = (f"the model width d_model / n_embd {d} → {new_d} where the model is built (embeddings, attention, "
               f"norms and feed-forward together; a multiple of the number of heads)") if d else \
        "the model width d_model / n_embd where the model is built (a multiple of the number of heads)"
    lines: list[str] = []
    ff = ""
    if pairs:
        u0 = pairs[0][1]
        new_ff = u0 * f if grow else max(1, u0 // f)
        ff = f", or the feed-forward width ({u0} → {new_ff}) in every block"
        lines.append(DEVICE_LINE)
        for la, u in pairs[:th.fix_max_code_layers]:
            lines += _linear_pair(run, la, u * f if grow else max(1, u // f)) or []
        lines.append("# then re-create the optimizer: it holds the old layers' parameters")
    else:
        lines.append(f"# where the model is built: d_model (n_embd) = {new_d or 'a multiple of nhead'}")
    never = (f"; never {list_names(qkv, th)} alone: its output is split into query, key and value heads"
             if qkv else "")
    head = "Use a bigger model: raise " if grow else "Or shrink the model: lower "
    return Fix(FixKind.CAPACITY, f"{head}{model_w}{ff}{never}", "\n".join(lines))


def dropout_fix(run: Run, th: Thresholds) -> Fix | None:
    """Dropout (p = ``fix_dropout_p``) after the hidden layers: ``nn.Sequential`` for a plain layer, ``OnOutput``
    for a recurrent one (and between its stacked layers); in a transformer, the blocks' own dropout modules
    (attention, residual branches, feed-forward) set to p — never a new one after a query/key/value projection."""
    hidden = hidden_layers(run) if run.header is not None else []
    if not hidden:
        return None
    p = th.fix_dropout_p
    if any(transformer_block(run, la) is not None for la in hidden):
        return Fix(FixKind.REGULARIZATION, f"Raise the transformer blocks' own dropout to p={p} (attention weights, "
                                           f"residual branches, feed-forward)",
                   "\n".join(["for m in model.modules():",
                              "    if isinstance(m, nn.Dropout):",
                              f"        m.p = {p}",
                              "    elif isinstance(m, nn.MultiheadAttention):",
                              f"        m.dropout = {p}   # on the attention weights",
                              "# blocks without nn.Dropout modules: add them on the residual branches in forward()"]))
    lines: list[str] = []
    for h in hidden[:th.fix_max_code_layers]:
        if recurrent(h) is not None and any("_l1" in q for q in h.params) and is_plain_path(h.name) and h.name:
            lines.append(f"{module_path(h.name)}.dropout = {p}   # between its stacked layers")
        lines += wrap_lines(h, f"nn.Dropout(p={p})")
    lines += left_out([h.name for h in hidden], th)
    return Fix(FixKind.REGULARIZATION, f"Add dropout (p={p}) after {list_names([h.name for h in hidden], th)}",
               "\n".join(with_on_output(lines)))


RESIDUAL_CLASS = """class Residual(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)
"""


def residual_fix(run: Run, names: tuple[str, ...] | list[str], th: Thresholds) -> Fix | None:
    """Residual connections around the named layers whose input and output shapes match (a square Linear);
    never around a module that returns a tuple or inside a transformer block (which has them). A vanilla RNN
    gets its own remedy instead — a gated GRU, whose additive state update is the recurrent skip path; an
    LSTM/GRU has it already (None)."""
    summary = "Add residual (skip) connections so the gradient has a path that bypasses the deep stack"
    las = [la for n in names if (la := layer_info(run, n)) is not None]
    plain = [la for la in las if wrappable(la) and transformer_block(run, la) is None]
    square = [la for la in plain if la.type == "Linear" and la.fan_in and la.fan_in == la.fan_out]
    if square:
        la = square[0]
        path = module_path(la.name)
        return Fix(FixKind.RESIDUAL, f"{summary}: {label(la.name)} maps {la.fan_in} features to as many, so it can "
                   f"add its input to its output", f"{RESIDUAL_CLASS}\n\n{path} = Residual({path})")
    vanilla = [la for la in las if la.type.lower() == "rnn" and la.name and is_plain_path(la.name)]
    if vanilla:
        lines = [DEVICE_LINE]
        for la in vanilla[:th.fix_max_code_layers]:
            path = module_path(la.name)
            lines += [f"old = {path}",
                      f"{path} = nn.GRU(old.input_size, old.hidden_size, num_layers=old.num_layers, bias=old.bias, "
                      f"batch_first=old.batch_first, dropout=old.dropout, bidirectional=old.bidirectional, "
                      f"device=device)"]
        lines.append(REBUILD_OPTIMIZER)
        return Fix(FixKind.RESIDUAL, f"Use a gated recurrent layer (GRU, same inputs and outputs) instead of the "
                   f"vanilla RNN {list_names([la.name for la in vanilla], th)}: its additive state update is the "
                   f"recurrent form of a skip connection (a residual cannot go around a layer that returns a tuple)",
                   "\n".join(lines))
    if len(plain) < len(las):
        return None     # a recurrent layer, attention or a transformer block: they have their own remedies
    head = output_layer(run)
    inner = [la for la in plain if head is None or la is not run.layers[head]]
    if not inner:
        return None
    return Fix(FixKind.RESIDUAL, summary + " (where a block's input and output shapes match)",
               f"# in forward(), around {module_path(inner[0].name)} (the same shape in and out): x = x + block(x)")
