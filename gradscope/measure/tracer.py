"""Learning which activation function follows each layer, on the first training forward pass.

Module forward hooks cannot see activations applied as functions (``F.relu(self.fc1(x))``, the activation
inside ``nn.TransformerEncoderLayer``). So on the first training forward pass a ``TorchFunctionMode``
watches which activation function is called on which layer's output; that pass runs unchanged (the mode
only forwards the call) and the mode is removed right after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_ACT_NAMES = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "tanh", "sigmoid",
    "hardtanh", "softsign", "hardsigmoid", "hardswish", "softplus", "prelu", "rrelu", "logsigmoid",
}
# Shape-preserving functions an activation may be applied after (``F.relu(F.dropout(fc(x)))``).
_TRANSPARENT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "contiguous", "clone",
                "view", "reshape", "flatten", "squeeze", "unsqueeze", "transpose", "permute", "max_pool1d",
                "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d",
                "adaptive_max_pool2d", "__getitem__"}



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
        self.error: Exception | None = None   # the bookkeeping raised: what it learned is incomplete

    def register(self, t: torch.Tensor, layer: int, *, own: bool = True) -> None:
        self.outputs[id(t)] = layer
        self._keep.append(t)
        if own:
            self.layer_outputs.setdefault(layer, []).append((t, t._version))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)   # the user's op, exactly as called; its errors are the user's
        if self.error is None:
            try:   # gradscope's bookkeeping never raises into the user's forward
                self._note(func, args, kwargs, result)
            except Exception as e:   # kept for the watch's guard to report once, after the pass
                self.error = e
        return result

    def _note(self, func: Any, args: Any, kwargs: Any, result: Any) -> None:
        src = args[0] if args else kwargs.get("input")
        if isinstance(src, torch.Tensor) and id(src) in self.outputs:
            layer = self.outputs[id(src)]
            name = _func_name(func)
            if name in _ACT_NAMES:
                self.acts.setdefault(layer, name)
            elif name in _TRANSPARENT and isinstance(result, torch.Tensor) and result is not src:
                self.register(result, layer, own=False)

    def release(self) -> None:
        self.outputs.clear()
        self.layer_outputs.clear()
        self._keep.clear()
