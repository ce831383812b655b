"""Overhead of gradscope.watch: time per training step with ÷ without, same process, interleaved, repeated.

    python benchmarks/overhead.py                       # all models, all settings
    python benchmarks/overhead.py --models mlp --pairs 15

Design, because this machine is a shared VM whose speed drifts by ±30% over seconds: two copies of the same
model (same weights, same data) live in one process, one plain and one watched. They train in alternating
blocks of ``--block`` steps (plain, watched, watched, plain, ...), so each watched block is timed next to a
plain block under the same conditions, and the figure is the median over pairs of (watched block time ÷
plain block time), with the interquartile range. The block is 20 steps, so with the default ``every=20``
each watched block holds exactly one recorded step and the ratio is the steady-state average cost. One
intra-op thread. The first ``warmup`` steps gradscope always records run
before timing starts.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import gradscope


def mlp() -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    return model, lambda: (x, y)


def cnn() -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    layers: list[nn.Module] = []
    c = 3
    for _ in range(4):
        layers += [nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
        c = 32
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    return model, lambda: (x, y)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


def transformer() -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    x, y = torch.randn(16, 128, 256), torch.randint(0, 10, (16,))
    return _Encoder(), lambda: (x, y)


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}

SETTINGS: dict[str, dict[str, object]] = {
    "default (every 20)": {},
    "every step": {"every": 1},
    "hooks only (never recorded)": {"every": 10**9, "warmup": 0},
}


class _Trainer:
    def __init__(self, model: nn.Module, data: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model = model
        self.x, self.y = data()
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def block(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad()
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.opt.step()
        return time.perf_counter() - t0


def measure(name: str, setting: dict[str, object], pairs: int, block: int, logdir: str) -> tuple[float, float,
                                                                                                  float, float]:
    """(median ratio, 25th percentile, 75th percentile, plain ms/step)."""
    torch.manual_seed(0)
    model, data = MODELS[name]()
    plain, watched = _Trainer(model, data), _Trainer(copy.deepcopy(model), data)
    scope = gradscope.watch(watched.model, logdir, **setting)
    try:
        warm = int(setting.get("warmup", gradscope.measure.watch.DEFAULT_WARMUP))  # type: ignore[call-overload]
        every = int(setting.get("every", gradscope.measure.watch.DEFAULT_EVERY))  # type: ignore[call-overload]
        plain.block(3)
        watched.block(warm + (-warm) % min(every, block))   # align: each timed block holds one recorded step
        ratios, plain_times = [], []
        for i in range(pairs):
            if i % 2:
                w = watched.block(block)
                p = plain.block(block)
            else:
                p = plain.block(block)
                w = watched.block(block)
            ratios.append(w / p)
            plain_times.append(p / block)
    finally:
        scope.close()
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2], 1000 * statistics.median(plain_times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--block", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {args.pairs} interleaved pairs of "
          f"{args.block}-step blocks; ratio = median (IQR) of watched ÷ plain block time")
    print(f"| model | plain ms/step | {' | '.join(SETTINGS)} |")
    print(f"|---|---|{'---|' * len(SETTINGS)}")
    for name in args.models.split(","):
        cells = []
        plain_ms = []
        for setting in SETTINGS.values():
            with tempfile.TemporaryDirectory() as tmp:
                med, lo, hi, ms = measure(name, setting, args.pairs, args.block, tmp)
            cells.append(f"{med:.3f} ({lo:.2f}–{hi:.2f})")
            plain_ms.append(ms)
        print(f"| {name} | {statistics.median(plain_ms):.1f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
