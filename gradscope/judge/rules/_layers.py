"""What kind of layer a header entry is, read from the names, types and shapes the watch recorded (no torch):
its access path and parameters, its width in units, whether it is recurrent (its forward returns a tuple), a
part of a transformer block, or a fused query/key/value projection. The fix builders (``_fixes.py``) decide
what a snippet may do from these answers (issue 11.2); they never guess from a layer's position alone.
"""

from __future__ import annotations

import numpy as np

from gradscope.judge.rules._common import (
    is_plain_path,
    module_path,
    nanmedian,
    weighted_layers,
)
from gradscope.store.run import Run
from gradscope.store.schema import LayerInfo

SEQUENCE_TYPES = ("attention", "transformer", "lstm", "gru", "rnn", "embedding")
TUPLE_OUTPUT = ("lstm", "gru", "rnn", "multiheadattention", "attention")   # layers whose forward returns a tuple
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
def conv_dims(la: LayerInfo) -> str | None:
    """"1d"/"2d"/"3d" for torch's convolutions; None otherwise — Hugging Face's ``Conv1D`` (capital D) is a
    Linear layer with a transposed weight, not a convolution."""
    t = la.type
    return t[-2:] if t.lower().startswith("conv") and t[-2:] in ("1d", "2d", "3d") else None
def wrappable(la: LayerInfo) -> bool:
    """``la`` can be replaced by ``nn.Sequential(la, ...)`` in code: a plain access path, and a layer whose
    output is one tensor (recurrent layers and attention return tuples)."""
    t = la.type.lower()
    return bool(la.name) and is_plain_path(la.name) and not any(k in t for k in TUPLE_OUTPUT)
_RECURRENT = {"lstm": ("nn.LSTM", 4), "gru": ("nn.GRU", 3), "rnn": ("nn.RNN", 1)}
"""Recurrent layer types (lower-case class name) → their constructor and the gates stacked in each weight's rows
(``weight_ih_l0`` of an LSTM is 4·hidden × input)."""
def recurrent(la: LayerInfo) -> tuple[str, int] | None:
    """(constructor, gates) of an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` layer, else None."""
    return _RECURRENT.get(la.type.lower())
_ATTENTION_PARTS = ("attn", "attention", "qkv", "query", "key", "value", "q_proj", "k_proj", "v_proj", "in_proj",
                    "out_proj", "o_proj")
_FUSED_QKV = ("c_attn", "qkv", "in_proj", "qkv_proj", "wqkv", "query_key_value", "to_qkv")
_BLOCK_PARTS = _ATTENTION_PARTS + _FUSED_QKV + ("self_attn", "mlp", "ffn", "feed_forward", "c_fc", "c_proj",
                                                "linear1", "linear2", "fc1", "fc2", "dense", "up_proj",
                                                "down_proj", "gate_proj", "proj")
RESIDUAL_PROJ = ("c_proj", "out_proj", "o_proj", "linear2", "down_proj", "fc2", "proj")
"""Last name parts of the projections that write into a transformer's residual stream."""
def _parts(name: str) -> list[str]:
    return [p.lower() for p in name.split(".")] if name else []
def attention_named(name: str) -> bool:
    return any(any(k in p for k in ("attn", "attention")) or p in _ATTENTION_PARTS or p in _FUSED_QKV
               for p in _parts(name))
def _block_prefix(name: str) -> str:
    """The module a layer's block is: its name without the trailing attention/MLP parts ("h.0.attn.c_attn" →
    "h.0", "encoder.layers.0.linear1" → "encoder.layers.0"), else without its last part."""
    parts = name.split(".") if name else []
    k = len(parts)
    while k and parts[k - 1].lower() in _BLOCK_PARTS:
        k -= 1
    if k == len(parts):
        k -= 1
    return ".".join(parts[:max(k, 0)])
def transformer_block(run: Run, la: LayerInfo) -> str | None:
    """The name of the transformer block ``la`` sits in, or None: a block (a module other than the root) holding
    an ``nn.MultiheadAttention``, or attention-named layers and a normalization layer (GPT-2's ``ln_1``,
    ``attn.c_attn``, ``mlp.c_fc``; Hugging Face's ``Conv1D`` projections). Read from the names and types the
    header records."""
    b = _block_prefix(la.name)
    if not b:
        return None
    members = [x for x in run.layers if x.name.startswith(b + ".")]
    own = [x for x in members if _block_prefix(x.name) == b]     # not those of a block nested inside it
    if any(x.type == "MultiheadAttention" for x in own):
        return b
    attention = any(attention_named(x.name[len(b) + 1:]) for x in own)
    normed = any("norm" in x.type.lower() for x in members)
    return b if attention and normed else None
def fused_qkv(la: LayerInfo) -> bool:
    """A fused query/key/value projection (``c_attn``, ``qkv``, ``in_proj``, ``nn.MultiheadAttention``): its
    output is split into heads, so its width is not a free choice."""
    return la.type == "MultiheadAttention" or (bool(la.name) and la.name.split(".")[-1].lower() in _FUSED_QKV)
def block_names(run: Run) -> list[str]:
    out: list[str] = []
    for la in run.layers:
        b = transformer_block(run, la)
        if b is not None and b not in out:
            out.append(b)
    return out
def param_path(full: str) -> str:
    """Expression for the parameter called ``full`` (``model.h[0].attn.c_proj.weight``, else
    ``model.get_parameter('...')``)."""
    owner, _, leaf = full.rpartition(".")
    if is_plain_path(owner) and is_plain_path(leaf) and leaf and not leaf.isdigit():
        return f"{module_path(owner)}.{leaf}"
    return f"model.get_parameter({full!r})"
def param_shape(run: Run, full: str) -> tuple[int, ...] | None:
    return next((tuple(p.shape) for p in run.params if p.name == full), None)
def next_layer(run: Run, la: LayerInfo) -> LayerInfo | None:
    i = run.layers.index(la)
    return run.layers[i + 1] if i + 1 < len(run.layers) else None
def hidden_layers(run: Run) -> list[LayerInfo]:
    """Weighted layers but the head (all of them when there is only one)."""
    w = [run.layers[i] for i, _ in weighted_layers(run)]
    return w[:-1] if len(w) > 1 else w
def block_norm_units(run: Run, block: str) -> int | None:
    """The width of a transformer block's residual stream (d_model / n_embd): what its LayerNorm normalizes."""
    for x in run.layers:
        if x.name.startswith(block + ".") and "norm" in x.type.lower():
            n = units(run, x)
            if n:
                return n
    return None
