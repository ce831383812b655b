"""Models shared by ``gradscope demo``, the examples and the zoo (zoo/cases.py), so they cannot drift apart."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                                                   "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
"""Activation names ``mlp`` accepts as strings."""


def mlp(sizes: list[int], act: str | Callable[[], nn.Module] = "relu", *, bn: bool = False,
        dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given sizes (input, hidden..., output) with ``act`` between them (optionally
    BatchNorm before it, Dropout after it); no activation after the last layer."""
    make = ACTIVATIONS[act] if isinstance(act, str) else act
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                mods.append(nn.BatchNorm1d(b))
            mods.append(make())
            if dropout:
                mods.append(nn.Dropout(dropout))
    return nn.Sequential(*mods)


def init_linear(model: nn.Module, *, weight: Callable[[torch.Tensor], Any], bias: float = 0.0) -> None:
    """Apply ``weight`` to every Linear weight (under ``no_grad``) and fill the biases with ``bias``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                weight(m.weight)
                if m.bias is not None:
                    m.bias.fill_(bias)


#: The nonlinearity names ``nn.init.kaiming_normal_`` accepts that make sense after a Linear layer.
Nonlinearity = Literal["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


def he_init(gen: torch.Generator, nonlinearity: Nonlinearity = "relu") -> Callable[[torch.Tensor], Any]:
    return lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=gen)


def normal_init(gen: torch.Generator, std: float) -> Callable[[torch.Tensor], Any]:
    return lambda w: nn.init.normal_(w, 0.0, std, generator=gen)


class DetachMLP(nn.Module):
    """Four Linear layers (2 → 64 → 64 → 64 → 2) with ReLU; ``detach=True`` cuts the first layer off the loss
    path (``.detach()`` on its activation), the training-loop bug the ``detached`` demo shows."""

    def __init__(self, *, detach: bool) -> None:
        super().__init__()
        self.detach = detach
        self.fc1, self.fc2, self.fc3, self.head = (nn.Linear(2, 64), nn.Linear(64, 64), nn.Linear(64, 64),
                                                   nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if self.detach:
            h = h.detach()   # the bug: nothing below this line ever gets a gradient
        h = torch.relu(self.fc2(h))
        return self.head(torch.relu(self.fc3(h)))
