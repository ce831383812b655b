"""Hand-written traces for the rule tests: build ``Run`` objects directly (no torch, no log files).

``healthy_run(...)`` gives a plausible healthy training run (statistics in the ranges a correctly initialized,
well-tuned net shows); tests then break one aspect with ``set_layer``/``set_param``/``set_metric`` and check
that exactly the matching rule fires. Every generator takes a seed so variants differ in their noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradscope.store.run import Loop, Run, Series
from gradscope.store.schema import SATURATING_ACTIVATIONS, Header, InputStats, LayerInfo, NonFiniteRecord, ParamInfo

BATCH = 32


@dataclass(frozen=True)
class L:
    """A layer of a hand-written model."""

    name: str
    fan_in: int
    fan_out: int
    act: str | None = "relu"
    type: str = "Linear"
    init_std: float | None = None      # default: PyTorch's kaiming_uniform_(a=√5), Var = 1/(3·fan_in)
    bias: bool = True
    units: int | None = None           # default fan_out (Linear); channels for Conv

    @property
    def std0(self) -> float:
        return self.init_std if self.init_std is not None else math.sqrt(1.0 / (3 * self.fan_in))


def mlp(widths: tuple[int, ...] = (20, 64, 64, 10), act: str | None = "relu", *, names: list[str] | None = None,
        init_std: float | None = None) -> list[L]:
    """Linear layers widths[0]→…→widths[-1]; hidden layers followed by ``act``, the head by nothing."""
    n = len(widths) - 1
    names = names or [f"fc{i + 1}" for i in range(n)]
    return [L(names[i], widths[i], widths[i + 1], act if i < n - 1 else None, init_std=init_std) for i in range(n)]


def healthy_run(layers: list[L] | None = None, *, n: int = 60, every: int = 1, seed: int = 0,
                optimizer: str = "SGD", lr: float = 0.05, losses: bool = True, val: bool = True,
                accuracy: bool = False, inputs: bool = True, loss_start: float = 2.3, loss_end: float = 0.3,
                rel_grad: float = 1e-2, dead_window: int = 3) -> Run:
    """A healthy run of ``n`` recorded steps (every ``every`` steps)."""
    rng = np.random.default_rng(seed)
    layers = layers if layers is not None else mlp()
    n_layers = len(layers)
    steps = np.arange(n, dtype=np.int64) * every
    infos, params = [], []
    for la in layers:
        pnames = [f"{la.name}.weight"] + ([f"{la.name}.bias"] if la.bias else [])
        infos.append(LayerInfo(name=la.name, type=la.type, fan_in=la.fan_in, fan_out=la.fan_out,
                               unit_dim=-1 if la.type == "Linear" else 1, act=la.act, params=tuple(pnames),
                               weight=pnames[0]))
        params.append(ParamInfo(pnames[0], la.name, (la.fan_out, la.fan_in), la.fan_out * la.fan_in, 0.0, la.std0))
        if la.bias:
            params.append(ParamInfo(pnames[1], la.name, (la.fan_out,), la.fan_out, 0.0, 0.05))
    P = len(params)

    def noise(shape: tuple[int, ...], sigma: float) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, size=shape))

    units = np.array([la.units or la.fan_out for la in layers], dtype=float)
    count = np.tile(units * BATCH, (n, 1))
    var = noise((n, n_layers), 0.1)
    ls: dict[str, np.ndarray] = {
        "count": count,
        "mean": rng.normal(0.0, 0.05, size=(n, n_layers)),
        "var": var,
        "absmax": 4 * np.sqrt(var) * noise((n, n_layers), 0.05),
        "zero_frac": np.zeros((n, n_layers)),
        "nonfinite": np.zeros((n, n_layers)),
        "units": np.tile(units, (n, 1)),
        "inactive": np.full((n, n_layers), np.nan),
        "dead": np.full((n, n_layers), np.nan),
        "saturated": np.full((n, n_layers), np.nan),
        "dmean": np.full((n, n_layers), np.nan),
        "grad_norm": 1e-3 * np.sqrt(count) * noise((n, n_layers), 0.2),
        "calls": np.ones((n, n_layers)),
    }
    for j, la in enumerate(layers):
        a = (la.act or "").lower()
        if a in ("relu", "relu6"):
            ls["dead"][:, j] = np.round(units[j] * rng.uniform(0.0, 0.06, size=n))
            ls["inactive"][:, j] = ls["dead"][:, j] + np.round(units[j] * rng.uniform(0.0, 0.1, size=n))
        if a in SATURATING_ACTIVATIONS:
            ls["saturated"][:, j] = np.round(units[j] * rng.uniform(0.0, 0.08, size=n))
            ls["dmean"][:, j] = rng.uniform(0.6, 0.8, size=n)
    pnorm = np.array([p.init_std * math.sqrt(p.numel) for p in params])
    norm = np.tile(pnorm, (n, 1)) * (1 + 0.1 * np.linspace(0, 1, n))[:, None]
    decay = np.linspace(1.0, 0.5, n)[:, None]
    if optimizer.lower().startswith(("adam", "rmsprop")):
        # Adam moves each element by ≈ lr·|m/√v| (≈ 0.3·lr with noisy gradients): ratio ≈ 0.3·lr / rms(w)
        update = np.array([0.3 * lr / p.init_std for p in params])[None, :]
    else:
        update = np.full((1, P), lr * rel_grad)
    grad = rel_grad * norm * decay * noise((n, P), 0.3)
    ps: dict[str, np.ndarray] = {
        "grad_norm": grad,
        "norm": norm,
        "update_ratio": update * decay * noise((n, P), 0.3),
        "grad_nonfinite": np.zeros((n, P)),
    }
    gtot = np.sqrt((grad ** 2).sum(axis=1))
    all_steps = np.arange(int(steps[-1]) + 1, dtype=np.int64)
    all_gn = np.interp(all_steps, steps, gtot) * noise((all_steps.size,), 0.1)
    all_gn[steps] = gtot
    header = Header(schema=1, gradscope="test", torch=None, created="", rank=0, world_size=1, every=every,
                    warmup=0, dead_window=dead_window, saturation_derivative=0.1, step_unit="forward",
                    model="Net", layers=tuple(infos), params=tuple(params),
                    optimizer={"class": optimizer, "lr": lr})
    run = Run(name="case", path=Path("."), header=header, layers=tuple(infos), params=tuple(params), steps=steps,
              layer_stats=ls, param_stats=ps, grad_norm=gtot, all_steps=all_steps, all_grad_norm=all_gn,
              lr=[(lr,)] * n, skipped=np.zeros(n, dtype=bool), completed=True)
    # The loop records the watch writes (issue 12): train mode, gradients zeroed, one backward per step.
    span = np.stack([np.concatenate([[0], steps[:-1] + 1]), steps], axis=1).astype(np.int64)
    covered = span[:, 1] - span[:, 0] + 1
    # The model output on each recorded step: logits (negative entries, rows not summing to 1).
    run.loop = Loop(span=span, forwards=covered, eval_forwards=np.zeros(n, dtype=np.int64),
                    grad_checks=covered - (span[:, 0] == 0), output_min=np.full(n, -3.0),
                    output_sum_lo=np.full(n, -2.0), output_sum_hi=np.full(n, 2.5),
                    output_cols=np.full(n, max(2, infos[-1].fan_out), dtype=np.int64))
    if inputs:
        run.inputs = [(int(s), InputStats(mean=float(rng.normal(0, 0.02)), std=float(rng.uniform(0.95, 1.05)),
                                          min=-3.5, max=3.5, count=BATCH * layers[0].fan_in,
                                          feature_std_min=0.8, feature_std_max=1.2, feature_mean_absmax=0.2))
                      for s in steps[::5]]
    if losses:
        t = steps.astype(float)
        span = max(float(t[-1]), 1.0)
        smooth = loss_end + (loss_start - loss_end) * np.exp(-4 * t / span)
        set_metric(run, "train_loss", steps, smooth * noise((n,), 0.08))
        if val:
            vsteps = steps[:: max(1, n // 10)]
            vsmooth = np.interp(vsteps, steps, smooth) * 1.05
            set_metric(run, "val_loss", vsteps, vsmooth * noise((vsteps.size,), 0.02))
        if accuracy:
            # chance (10 classes) at the start, 98% at the end
            acc = 0.98 - 0.88 * (smooth - loss_end) / (loss_start - loss_end)
            set_metric(run, "train_acc", steps, np.minimum(acc, 0.999))
            if val:
                set_metric(run, "val_acc", vsteps, np.interp(vsteps, steps, acc) - 0.01)
    return run


def metrics_only_run(metrics: dict[str, tuple[np.ndarray | list[float], np.ndarray | list[float]]]) -> Run:
    """A run with no gradscope log, only scalars (as read from TensorBoard)."""
    run = Run(name="tb", path=Path("."), header=None)
    for k, (st, v) in metrics.items():
        set_metric(run, k, st, v, source=f"tensorboard:{k}")
    return run


def set_metric(run: Run, key: str, steps: np.ndarray | list[int], values: np.ndarray | list[float],
               source: str = "gradscope") -> None:
    run.metrics[key] = Series(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=float), source)


def set_layer(run: Run, field: str, name: str, values: np.ndarray | float) -> None:
    j = run.layer_index(name)
    run.layer_stats[field][:, j] = values


def set_param(run: Run, field: str, name: str, values: np.ndarray | float) -> None:
    j = [p.name for p in run.params].index(name)
    run.param_stats[field][:, j] = values


def weight(run: Run, layer: str) -> str:
    return f"{layer}.weight"


def add_nonfinite(run: Run, step: int, where: str, layer: str | None = None) -> None:
    run.nonfinite.append(NonFiniteRecord(step=step, where=where, layer=layer))


def recompute_total(run: Run) -> None:
    """Total gradient norm (recorded and every-step) from the per-parameter norms after edits."""
    g = run.param_stats["grad_norm"]
    with np.errstate(invalid="ignore"):
        run.grad_norm = np.sqrt(np.nansum(g ** 2, axis=1))
    run.all_grad_norm = np.interp(run.all_steps, run.steps, run.grad_norm)
