"""Data for ``gradscope demo``: two interleaved spirals (a task a linear model cannot solve and a small MLP
solves in seconds), label noise, noisy features, raw (unstandardized) units. Everything takes a private
``torch.Generator``: runs are reproducible and the global RNG is left alone."""

from __future__ import annotations

import math

import torch


def two_spirals(n: int, *, noise: float = 0.15, turns: float = 1.5, gen: torch.Generator) -> tuple[
        torch.Tensor, torch.Tensor]:
    """``n`` points of two interleaved spirals in 2-D (class 0 and 1, half each), standardized-scale inputs
    (each coordinate within about ±1.3). Not linearly separable; a 2-hidden-layer MLP reaches ~99%."""
    half = n // 2
    t = torch.sqrt(torch.rand(half, generator=gen)) * turns * 2 * math.pi + 0.5   # denser near the centre
    r = t / (turns * 2 * math.pi + 0.5)
    arm = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    x = torch.cat([arm, -arm]) * 1.2
    x = x + noise * torch.randn(x.shape, generator=gen) * 0.5
    y = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    perm = torch.randperm(2 * half, generator=gen)
    return x[perm], y[perm]


def flip_labels(y: torch.Tensor, fraction: float, *, gen: torch.Generator) -> torch.Tensor:
    """Label noise: flip a ``fraction`` of binary labels (what a small, noisy dataset looks like)."""
    flip = torch.rand(y.shape, generator=gen) < fraction
    return torch.where(flip, 1 - y, y)


def noisy_features(n_train: int, n_val: int, *, features: int = 20, label_noise: float = 0.1,
                   gen: torch.Generator) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Gaussian inputs with ``features`` standard-normal features of which two decide the class
    (``x0 + x1 > 0``), and ``label_noise`` of the training labels flipped: little data, many irrelevant
    features, some wrong labels — what a large network memorizes instead of learning the rule."""
    x = torch.randn(n_train + n_val, features, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    yt = flip_labels(y[:n_train], label_noise, gen=gen)
    return (x[:n_train], yt), (x[n_train:], y[n_train:])


def raw_units(x: torch.Tensor) -> torch.Tensor:
    """The same inputs as a sensor would report them: offset 500, scale 150 (think raw pixel sums or
    prices) — the inputs nobody standardized."""
    return x * 150.0 + 500.0


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-feature standardization with the training set's mean and std (applied to every split)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return tuple((t - mean) / std for t in (train, *others))
