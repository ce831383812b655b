"""Overhead of gradscope.watch: time per training step with ÷ without, same process, interleaved, repeated.

    python benchmarks/overhead.py                 # all models, default and every-step settings
    python benchmarks/overhead.py --models mlp --rounds 5 --steps 20

Each round trains the same model for ``--steps`` steps plain, then with gradscope at each setting, in a
rotating order; the reported ratio is the median over rounds of (instrumented step time ÷ plain step time).
One intra-op thread, as in shared/PERF-NOTES.md, so that the two cores do not fight each other.
"""

from __future__ import annotations

import argparse
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


def run(model: nn.Module, data: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
        setting: dict[str, object] | None, logdir: str, skip: int = 5) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scope = gradscope.watch(model, logdir, **setting) if setting is not None else None
    try:
        x, y = data()
        for _ in range(skip):   # past gradscope's always-recorded warm-up steps: steady state is measured
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - t0) / steps
    finally:
        if scope is not None:
            scope.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings: dict[str, dict[str, object]] = {
        "default": {},
        "every step": {"every": 1},
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {args.rounds} rounds × {args.steps} steps")
    print(f"| model | plain ms/step | {' | '.join(settings)} |")
    print(f"|---|---|{'---|' * len(settings)}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, data = MODELS[name]()
        run(model, data, 3, None, "", skip=0)   # warm up allocator and kernels
        ratios: dict[str, list[float]] = {k: [] for k in settings}
        plain_times = []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = list(settings)
                order = order[r % len(order):] + order[: r % len(order)]
                plain = run(model, data, args.steps, None, tmp)
                plain_times.append(plain)
                for k in order:
                    t = run(model, data, args.steps, {**settings[k], "tensorboard": True}, f"{tmp}/{k}{r}")
                    ratios[k].append(t / plain)
        cells = " | ".join(f"{statistics.median(v):.3f}" for v in ratios.values())
        print(f"| {name} | {1000 * statistics.median(plain_times):.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
