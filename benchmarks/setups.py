"""Overhead of gradscope in real training setups: torch.compile, bf16 autocast, 2-process DDP (gloo, CPU).

    python benchmarks/setups.py                       # all three, MLP 8×512 batch 256
    python benchmarks/setups.py --setups bf16,ddp --rounds 3 --steps 10 --width 256

Ratios are instrumented step time ÷ the same setup without gradscope, measured in the same process(es),
interleaved, median over rounds (as benchmarks/overhead.py). One intra-op thread per process.

- compile: ``torch.compile`` (inductor) of the model with gradscope attached before compiling, vs. the same
  model compiled without it. Compilation happens in a warm-up outside the timing (the first run builds C++
  kernels: ~1 min cold on a 2-core machine; later runs hit the inductor cache).
- bf16: eager training under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
- ddp: two processes, ``DistributedDataParallel`` over gloo, each rank timing its own steps; rank 0's
  ratios are reported (ranks are in lockstep through the all-reduce).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

SETTINGS: dict[str, dict[str, object]] = {"default": {}, "every step": {"every": 1}}


def mlp(width: int) -> nn.Module:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(8):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


class Wrapped(nn.Module):
    """A model class of the user's own (torch.compile runs the root's hooks of such a class inside the graph)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _steps(model: nn.Module, call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
           n: int, ctx: Callable[[], AbstractContextManager[object]] = nullcontext) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        with ctx():
            loss = F.cross_entropy(call(x), y)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def _ratios(timer: Callable[[str | None], float], rounds: int) -> dict[str, float]:
    """timer(None) = plain step time, timer(setting) = with gradscope; rotated order, median of ratios."""
    out: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for r in range(rounds):
        order = list(SETTINGS)
        order = order[r % len(order):] + order[: r % len(order)]
        plain = timer(None)
        for k in order:
            out[k].append(timer(k) / plain)
    return {k: statistics.median(v) for k, v in out.items()}


def bench_compile(args: argparse.Namespace, tmp: str) -> tuple[float, dict[str, float]]:
    x, y = torch.randn(args.batch, 64), torch.randint(0, 10, (args.batch,))
    models: dict[str | None, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = {}
    scopes = []
    for key in [None, *SETTINGS]:
        torch.manual_seed(0)
        m = Wrapped(args.width)
        if key is not None:
            scopes.append(gradscope.watch(m, f"{tmp}/compile-{key}", tensorboard=False,
                                          **SETTINGS[key]))  # type: ignore[arg-type]
        models[key] = (m, torch.compile(m))
        _steps(m, models[key][1], x, y, 3)          # compile (outside the timing)
    plain_ms = []

    def timer(key: str | None) -> float:
        m, call = models[key]
        t = _steps(m, call, x, y, args.steps)
        if key is None:
            plain_ms.append(t * 1000)
        return t

    ratios = _ratios(timer, args.rounds)
    for scope in scopes:
        scope.close()
    torch._dynamo.reset()
    return statistics.median(plain_ms), ratios


def bench_bf16(args: argparse.Namespace, tmp: str) -> tuple[float, dict[str, float]]:
    torch.manual_seed(0)
    m = mlp(args.width)
    x, y = torch.randn(args.batch, 64), torch.randint(0, 10, (args.batch,))

    def ctx() -> AbstractContextManager[object]:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    _steps(m, m, x, y, 3, ctx)
    plain_ms = []

    def timer(key: str | None) -> float:
        if key is None:
            t = _steps(m, m, x, y, args.steps, ctx)
            plain_ms.append(t * 1000)
            return t
        with gradscope.watch(m, f"{tmp}/bf16-{key}-{time.perf_counter_ns()}", tensorboard=False,
                             **SETTINGS[key]):  # type: ignore[arg-type]
            _steps(m, m, x, y, 5, ctx)            # past the always-recorded warm-up steps
            return _steps(m, m, x, y, args.steps, ctx)

    ratios = _ratios(timer, args.rounds)
    return statistics.median(plain_ms), ratios


def _ddp_rank(rank: int, port: int, args: argparse.Namespace, tmp: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        net = nn.parallel.DistributedDataParallel(mlp(args.width))
        x, y = torch.randn(args.batch // 2, 64), torch.randint(0, 10, (args.batch // 2,))
        _steps(net, net, x, y, 3)
        plain_ms = []

        def timer(key: str | None) -> float:
            if key is None:
                t = _steps(net, net, x, y, args.steps)
                plain_ms.append(t * 1000)
                return t
            with gradscope.watch(net, f"{tmp}/ddp-{key}-{time.perf_counter_ns()}", tensorboard=False,
                                 **SETTINGS[key]):  # type: ignore[arg-type]
                _steps(net, net, x, y, 5)
                return _steps(net, net, x, y, args.steps)

        ratios = _ratios(timer, args.rounds)
        if rank == 0:
            Path(out).write_text(repr((statistics.median(plain_ms), ratios)))
    finally:
        dist.destroy_process_group()


def bench_ddp(args: argparse.Namespace, tmp: str) -> tuple[float, dict[str, float]]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = f"{tmp}/ddp-result"
    mp.spawn(_ddp_rank, args=(port, args, tmp, out), nprocs=2, join=True)
    import ast

    plain, ratios = ast.literal_eval(Path(out).read_text())
    return plain, ratios


BENCHES = {"compile": bench_compile, "bf16": bench_bf16, "ddp": bench_ddp}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setups", default="compile,bf16,ddp")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, MLP 8×{args.width} batch {args.batch}, 1 thread/process, "
          f"{args.rounds} rounds × {args.steps} steps", file=sys.stderr)
    print(f"| setup | plain ms/step | {' | '.join(SETTINGS)} |")
    print(f"|---|---|{'---|' * len(SETTINGS)}")
    for name in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            plain, ratios = BENCHES[name](args, tmp)
        cells = " | ".join(f"{ratios[k]:.3f}" for k in SETTINGS)
        print(f"| {name} | {plain:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
