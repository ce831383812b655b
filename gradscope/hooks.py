"""Finding the layers, describing them, and learning which activation follows each one. No global state.

Module forward hooks cannot see activations applied as functions (``F.relu(self.fc1(x))``, the activation
inside ``nn.TransformerEncoderLayer``). So on the first training forward pass a ``TorchFunctionMode``
watches which activation function is called on which layer's output; that pass runs unchanged (the mode
only forwards the call) and the mode is removed right after it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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

_ACT_NAMES = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "tanh", "sigmoid",
    "hardtanh", "softsign", "hardsigmoid", "hardswish", "softplus", "prelu", "rrelu", "logsigmoid",
}
# Shape-preserving functions an activation may be applied after (``F.relu(F.dropout(fc(x)))``).
_TRANSPARENT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "contiguous", "clone",
                "view", "reshape", "flatten", "squeeze", "unsqueeze", "transpose", "permute", "max_pool1d",
                "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d",
                "adaptive_max_pool2d", "__getitem__"}


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


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


class ActivationTracer(TorchFunctionMode):
    """Records, for one forward pass, which activation function consumes each layer's output.

    ``outputs`` maps ``id(tensor)`` to a layer index; the forward hook registers each layer output there.
    Tensors are kept alive in ``_keep`` for the pass so that ids are not reused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, int] = {}
        self.acts: dict[int, str] = {}
        self.layer_outputs: dict[int, list[tuple[torch.Tensor, int]]] = {}   # layer -> [(output, version)]
        self._keep: list[torch.Tensor] = []

    def register(self, t: torch.Tensor, layer: int, *, own: bool = True) -> None:
        self.outputs[id(t)] = layer
        self._keep.append(t)
        if own:
            self.layer_outputs.setdefault(layer, []).append((t, t._version))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        src = args[0] if args else kwargs.get("input")
        if isinstance(src, torch.Tensor) and id(src) in self.outputs:
            layer = self.outputs[id(src)]
            name = _func_name(func)
            if name in _ACT_NAMES:
                self.acts.setdefault(layer, name)
            elif name in _TRANSPARENT and isinstance(result, torch.Tensor) and result is not src:
                self.register(result, layer, own=False)
        return result

    def release(self) -> None:
        self.outputs.clear()
        self.layer_outputs.clear()
        self._keep.clear()
