"""The demo's problems: how to build each broken run and its fixed twin, and what gradscope should say."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from gradscope.demo.data import noisy_features, raw_units, standardize, two_spirals
from gradscope.demo.models import DetachMLP, he_init, init_linear, mlp, normal_init
from gradscope.judge.findings import Code, FixKind

DEFAULT_PROBLEM = "vanishing"
"""``gradscope demo`` with no option: the classic deep-sigmoid network. It trains in a few seconds, its
gradients shrink by orders of magnitude from the output to the input, and the report names the layers and
the fix (ReLU with He init), a real finding rather than a clean bill of health."""


@dataclass
class Setup:
    """One concrete training run: model, optimizer, data and the training-loop options."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    epochs: int
    batch_size: int = 64
    clip: float | None = None          # clip_grad_norm_ max_norm
    patience: int | None = None        # early stopping: epochs without a better validation loss, then the
    #                                    best checkpoint is restored and evaluated (a last metrics point)
    log_accuracy: bool = True          # log train_acc/val_acc (else losses only)


@dataclass(frozen=True)
class Problem:
    """A classic training problem: how to build the broken and the fixed run, and what gradscope should say."""

    name: str
    title: str                         # the broken run, one line
    fix: str                           # what the fixed run changes, one line
    expected: tuple[Code, ...]         # codes the broken run shows (empty: healthy)
    fix_kinds: tuple[FixKind, ...]     # kinds of gradscope's fixes the fixed run applies
    build: Callable[[bool, bool, torch.Generator], Setup] = field(repr=False)   # (fixed, small, gen)


def _spiral_data(gen: torch.Generator, n_train: int, n_val: int, *, noise: float = 0.15) -> tuple[
        tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y = two_spirals(n_train + n_val, noise=noise, gen=gen)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _epochs(full: int, small: bool, small_epochs: int) -> int:
    return small_epochs if small else full


def _healthy(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = mlp([2, 64, 64, 64, 2], nn.ReLU)
    init_linear(model, weight=he_init(gen))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(20, small, 12))


def _vanishing(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model = mlp([2, *[32] * 12, 2], nn.ReLU)
        init_linear(model, weight=he_init(gen))
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    else:
        # PyTorch's default Linear init (uniform, std 1/sqrt(3·fan_in)) under 12 sigmoids: each layer
        # multiplies the backward signal by at most 0.25 × ~0.6.
        model = mlp([2, *[32] * 12, 2], nn.Sigmoid)
        init_linear(model, weight=lambda w: nn.init.uniform_(w, -1 / math.sqrt(w.shape[1]),
                                                              1 / math.sqrt(w.shape[1]), generator=gen))
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return Setup(model, opt, train, val, _epochs(12, small, 8))


def _exploding(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = mlp([2, *[64] * 8, 2], nn.ReLU)
    if fixed:
        init_linear(model, weight=he_init(gen))
        return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), train, val,
                     _epochs(12, small, 10), clip=1.0)
    # std 1.0 where He init would use sqrt(2/64) = 0.18: every layer multiplies the signal by ~5.7.
    init_linear(model, weight=normal_init(gen, 1.0))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), train, val,
                 _epochs(12, small, 10))


def _dead_relu(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model = mlp([2, 64, 64, 64, 2], lambda: nn.LeakyReLU(0.1))
        init_linear(model, weight=he_init(gen, "leaky_relu"))
    else:
        # Biases at -3 with unit-scale weights: w·x + b < 0 for every input, so the ReLUs output 0 and pass
        # no gradient; nothing can revive them.
        model = mlp([2, 64, 64, 64, 2], nn.ReLU)
        init_linear(model, weight=he_init(gen), bias=-3.0)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(12, small, 8))


def _saturation(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    (xt, yt), (xv, yv) = _spiral_data(gen, 2000, 500)
    xt, xv = raw_units(xt), raw_units(xv)
    if fixed:
        xt, xv = standardize(xt, xv)
    model = mlp([2, 64, 64, 64, 2], nn.Tanh)
    init_linear(model, weight=lambda w: nn.init.xavier_normal_(w, gain=5 / 3, generator=gen))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), (xt, yt), (xv, yv), _epochs(12, small, 8))


def _overfitting(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    (xt, yt), val = noisy_features(128, 1000, gen=gen)
    # Losses only: the verdict comes from the validation-loss curve (its rise after the minimum). With
    # 10% flipped labels even the best model's train/validation accuracy gap is a few points.
    epochs = _epochs(100, small, 40)
    if fixed:
        model = mlp([xt.shape[1], 512, 512, 2], nn.ReLU, dropout=0.5)
        init_linear(model, weight=he_init(gen))
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        return Setup(model, opt, (xt, yt), val, epochs, batch_size=32, patience=10, log_accuracy=False)
    model = mlp([xt.shape[1], 512, 512, 2], nn.ReLU)
    init_linear(model, weight=he_init(gen))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Setup(model, opt, (xt, yt), val, epochs, batch_size=32, log_accuracy=False)


def _underfitting(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model: nn.Module = mlp([2, 64, 64, 64, 2], nn.ReLU)
        init_linear(model, weight=he_init(gen))
    else:
        model = mlp([2, 2], nn.ReLU)   # logistic regression on a task that is not linearly separable
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(20, small, 12))


def _not_in_optimizer(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = mlp([2, 64, 64, 64, 2], nn.ReLU)
    init_linear(model, weight=he_init(gen))
    head = nn.Linear(64, 2)
    init_linear(head, weight=he_init(gen))
    if fixed:
        model[6] = head            # replace the head first, then build the optimizer over the final model
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        # The bug: the optimizer is built, then the head is swapped for a new layer. The new head gets
        # gradients but no optimizer holds it: its weights never move and optimizer.zero_grad() never clears it.
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model[6] = head
    return Setup(model, opt, train, val, _epochs(12, small, 8))


def _detached(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = DetachMLP(detach=not fixed)
    init_linear(model, weight=he_init(gen))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(12, small, 8))


PROBLEMS: dict[str, Problem] = {p.name: p for p in (
    Problem("healthy", "a 3×64 ReLU MLP with He init, Adam and standardized inputs", "nothing to fix", (),
            (), _healthy),
    Problem("vanishing", "a 12-layer sigmoid MLP with PyTorch's default init",
            "ReLU activations with He (Kaiming) initialization", (Code.VANISHING_GRADIENTS,),
            (FixKind.ACTIVATION, FixKind.INIT), _vanishing),
    Problem("exploding", "an 8-layer ReLU MLP initialized with std 1.0 (He init would use 0.18)",
            "He initialization and clip_grad_norm_(max_norm=1.0)", (Code.EXPLODING_GRADIENTS,),
            (FixKind.INIT, FixKind.CLIPPING), _exploding),
    Problem("dead_relu", "a ReLU MLP whose biases start at -3",
            "LeakyReLU(0.1) with zero-initialized biases", (Code.DEAD_RELU,),
            (FixKind.ACTIVATION, FixKind.INIT), _dead_relu),
    Problem("saturation", "a tanh MLP fed raw inputs (offset 500, scale 150)",
            "standardized inputs (zero mean, unit variance per feature)",
            (Code.SATURATION, Code.UNNORMALIZED_INPUT), (FixKind.NORMALIZATION,), _saturation),
    Problem("overfitting", "a 2×512 MLP trained 100 epochs on 128 points with 20 features (2 useful) and "
            "10% wrong labels", "weight decay 0.1 (AdamW), dropout 0.5 and early stopping (patience 10, best "
            "checkpoint restored)", (Code.OVERFITTING,),
            (FixKind.EARLY_STOPPING, FixKind.REGULARIZATION), _overfitting),
    Problem("underfitting", "a linear model (no hidden layer) on two spirals",
            "a bigger model: three hidden layers of 64 ReLU units", (Code.UNDERFITTING,), (FixKind.CAPACITY,),
            _underfitting),
    Problem("not_in_optimizer", "a ReLU MLP whose head is replaced after the optimizer was built",
            "replace the head first, then build the optimizer over the final model", (Code.PARAM_NOT_UPDATED,),
            (FixKind.TRAINING_LOOP,), _not_in_optimizer),
    Problem("detached", "a ReLU MLP that calls .detach() on its first layer's activation in forward()",
            "no .detach() on the loss path", (Code.NO_GRADIENT,), (FixKind.TRAINING_LOOP,), _detached),
)}
