"""Finding the layers to watch and describing them (fans, unit dimension, parameters). No global state.

Which activation follows each layer is learned at run time by ``measure.tracer``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LayerFilter = Callable[[str, nn.Module], bool] | str | Iterable[str] | None

# Modules that are one layer although they have children (their children are not called as modules).
_ATOMIC = (nn.MultiheadAttention, nn.RNNBase)
# Leaf modules watched when a model has no parameters at all.
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                       nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid, nn.Hardswish,
                       nn.Softplus, nn.PReLU, nn.RReLU)
# Layers whose units are channels (dim 1) rather than features (last dim).
_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                  nn.GroupNorm)

@dataclass
class LayerSpec:
    index: int
    name: str
    module: nn.Module
    unit_dim: int
    fan_in: int | None
    fan_out: int | None
    params: tuple[str, ...]
    weight: str | None
    act: str | None = None


def _matches(flt: LayerFilter, name: str, module: nn.Module) -> bool:
    if flt is None:
        return True
    if callable(flt):
        return bool(flt(name, module))
    if isinstance(flt, str):
        return bool(re.search(flt, name)) or fnmatch.fnmatchcase(name, flt)
    return any(fnmatch.fnmatchcase(name, pat) for pat in flt)


def fans(weight: torch.Tensor | None) -> tuple[int | None, int | None]:
    """(fan_in, fan_out) as ``torch.nn.init`` computes them: dim 1 and dim 0 times the receptive field."""
    if weight is None or weight.dim() < 2:
        return None, None
    receptive = 1
    for s in weight.shape[2:]:
        receptive *= int(s)
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


def _stores_transposed(module: nn.Module, weight: torch.Tensor | None) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``) is a linear layer whose weight is
    stored (in, out), the transpose of ``nn.Linear``'s (out, in): its output has ``nf`` features. Recognized by
    duck typing (transformers is never imported here)."""
    nf = getattr(module, "nf", None)
    return (type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2
            and isinstance(nf, int) and int(weight.shape[1]) == nf)


def _main_weight(module: nn.Module) -> tuple[str | None, torch.Tensor | None]:
    named = dict(module.named_parameters(recurse=isinstance(module, _ATOMIC)))
    for key in ("weight", "in_proj_weight", "weight_ih_l0"):
        if key in named:
            return key, named[key]
    for key, p in named.items():
        if p.dim() >= 2:
            return key, p
    return None, None


def find_layers(model: nn.Module, flt: LayerFilter = None) -> list[LayerSpec]:
    """The modules to watch, in registration order: those owning parameters (MultiheadAttention and RNNs as
    one layer), or every activation module when the model has no parameters."""
    atomic_prefixes: list[str] = []
    picked: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in atomic_prefixes):
            continue
        if m is model and any(True for _ in m.children()):
            continue
        if isinstance(m, _ATOMIC):
            atomic_prefixes.append(name)
            picked.append((name, m))
        elif any(True for _ in m.parameters(recurse=False)):
            picked.append((name, m))
    if not picked:
        picked = [(n, m) for n, m in model.named_modules() if isinstance(m, _ACTIVATION_MODULES)]
        if not picked and not any(True for _ in model.children()):
            picked = [("", model)]
    specs: list[LayerSpec] = []
    for name, m in picked:
        if not _matches(flt, name, m):
            continue
        wname, w = _main_weight(m)
        fi, fo = fans(w)
        if _stores_transposed(m, w):
            fi, fo = fo, fi
        prefix = f"{name}." if name else ""
        pnames = tuple(prefix + n for n, _ in m.named_parameters(recurse=isinstance(m, _ATOMIC)))
        specs.append(LayerSpec(index=len(specs), name=name, module=m,
                               unit_dim=1 if isinstance(m, _CHANNEL_FIRST) else -1, fan_in=fi, fan_out=fo,
                               params=pnames, weight=(prefix + wname) if wname else None))
    return specs


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a module output: a tensor, a tuple/list (LSTM, MultiheadAttention) or a dict."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    elif isinstance(obj, dict):
        for o in obj.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def all_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output (for the model's output: dicts of logits and auxiliary losses)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    out: list[torch.Tensor] = []
    if isinstance(obj, (tuple, list)):
        for o in obj:
            out.extend(all_tensors(o))
    elif isinstance(obj, dict):
        for o in obj.values():
            out.extend(all_tensors(o))
    elif hasattr(obj, "__dataclass_fields__") or hasattr(obj, "to_tuple"):   # HF ModelOutput
        for o in getattr(obj, "values", lambda: [])():
            out.extend(all_tensors(o))
    return out
