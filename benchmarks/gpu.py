"""gradscope's cost on a GPU: step-time ratios, host syncs per step and peak memory, in one command.

    python benchmarks/gpu.py                      # three models, ~3-5 minutes on one H100/H200-class GPU
    python benchmarks/gpu.py --models gpt --gpt-layers 24 --gpt-d 2048
    python benchmarks/gpu.py --smoke              # tiny sizes, runs on a CPU in seconds (CI checks it)

Models, all with bf16 autocast and fused AdamW: a GPT-like decoder written with ``nn.TransformerEncoder``
(causal mask, pre-LN, GELU; 12 layers × d 1024, sequence 512, batch 16 by default), ResNet-50 (torchvision's
when installed, else the same bottleneck network defined here; batch 128, 224², channels-last), and the
DeepOBS ``cifar10_3c3d`` CNN (batch 128).

Method (the one of benchmarks/overhead.py, for a GPU): two copies of each model with the same weights live in
one process, one plain and one watched; they train in alternating blocks of ``--block`` steps (plain, watched,
watched, plain, ...) with ``torch.cuda.synchronize()`` at each block end, and each figure is the median over
``--pairs`` pairs of watched-block time ÷ plain-block time. Settings: the default (``every=20``, TensorBoard
mirror on), every step (``every=1``), and unrecorded steps only (``every`` larger than the run: the hooks and
every-step checks alone). Host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` counting the warnings on
recorded and on unrecorded steps, less those of the plain step. Peak memory: ``max_memory_allocated`` over
steps at ``every=1`` against plain steps, as a share of the plain step's own peak.

Budgets (docs/performance.md, "GPU"): default ≤ 1.03×, unrecorded ≤ 1.01×, every step ≤ 1.5×, 0 syncs on an
unrecorded step and ≤ 1 on a recorded one, peak memory ≤ +3% at every=1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning

_WATCH_DEFAULTS = inspect.signature(gradscope.watch).parameters
DEFAULT_EVERY: int = _WATCH_DEFAULTS["every"].default
"""The product's default recording interval (read from ``gradscope.watch``'s signature, wherever it lives)."""
DEFAULT_WARMUP: int = _WATCH_DEFAULTS["warmup"].default
"""Steps gradscope always records first; run before timing so that they do not count."""

BUDGET_DEFAULT = 1.03
"""Default settings (every 20th step recorded) may cost at most 3% of step time."""
BUDGET_UNRECORDED = 1.01
"""A step that is not recorded (hooks and every-step checks only) may cost at most 1%."""
BUDGET_EVERY_STEP = 1.5
"""Recording every step may cost at most 1.5× (a debugging setting)."""
BUDGET_SYNCS_UNRECORDED = 0
"""No host sync on an unrecorded step: a sync stalls the CPU's run-ahead of the GPU every step."""
BUDGET_SYNCS_RECORDED = 1
"""At most one host sync on a recorded step: the one transfer of the step's statistics."""
BUDGET_PEAK_MEMORY = 0.03
"""Peak memory at every=1 at most 3% above the plain step's."""

UNRECORDED_EVERY = 10**9
"""``every`` for the unrecorded-only setting: after the warm-up no step is ever recorded."""


# ------------------------------------------------------------------------------------------------ models
class GPT(nn.Module):
    """A GPT-like decoder from torch's own blocks: token + position embeddings, pre-LN
    ``nn.TransformerEncoder`` layers with GELU and a causal mask, a final LayerNorm and an LM head."""

    def __init__(self, vocab: int, d: int, layers: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        block = nn.TransformerEncoderLayer(d, max(d // 64, 1), 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        h = self.blocks(self.tok(tokens) + self.pos(pos), mask=mask, is_causal=True)
        return self.head(self.norm(h))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3), as torchvision's."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """Bottleneck ResNet; ``blocks=(3, 4, 6, 3), width=64`` is ResNet-50."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            w = width * 2**i
            for j in range(n):
                stages.append(Bottleneck(cin, w, 2 if j == 0 and i > 0 else 1))
                cin = w * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


class CNN3c3d(nn.Module):
    """DeepOBS ``cifar10_3c3d``: three conv layers (64 5×5, 96 3×3, 128 3×3) with ReLU and 3×3/2 max-pooling,
    then dense 512, 256, 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 64, 5), nn.Conv2d(64, 96, 3)
        self.conv3 = nn.Conv2d(96, 128, 3, padding=1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(128 * 3 * 3, 512), nn.Linear(512, 256), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 3, 2, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


@dataclass
class Bench:
    """One model to time: a builder (same weights on every call), one fixed batch, and its loss."""

    name: str
    build: Callable[[], nn.Module]
    batch: tuple[torch.Tensor, torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    channels_last: bool = False


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make()
    return build


def benches(args: argparse.Namespace, device: torch.device) -> list[Bench]:
    """The models asked for, at the sizes of ``args`` (tiny with ``--smoke``)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    out: list[Bench] = []
    ce = F.cross_entropy
    for name in args.models:
        if name == "gpt":
            vocab, seq, b = args.gpt_vocab, args.gpt_seq, args.gpt_batch
            tok = torch.randint(0, vocab, (b, seq + 1), generator=g).to(device)
            out.append(Bench(
                f"GPT-like {args.gpt_layers}×d{args.gpt_d}, seq {seq}, batch {b}",
                _seeded(functools.partial(GPT, vocab, args.gpt_d, args.gpt_layers, seq)), (tok[:, :-1], tok[:, 1:]),
                lambda out, y: ce(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))))
        elif name == "resnet50":
            make: Callable[[], nn.Module]
            label = "ResNet-50"
            try:
                if args.smoke:
                    raise ImportError
                from torchvision.models import resnet50  # type: ignore[import-not-found,unused-ignore]

                make = resnet50
            except ImportError:
                blocks, width = ((1, 1, 1, 1), 8) if args.smoke else ((3, 4, 6, 3), 64)
                make = functools.partial(ResNet, blocks, width)
                label = "ResNet (tiny)" if args.smoke else "ResNet-50 (bottleneck, defined here)"
            x = torch.randn(args.resnet_batch, 3, args.resnet_size, args.resnet_size, generator=g).to(device)
            y = torch.randint(0, 1000, (args.resnet_batch,), generator=g).to(device)
            out.append(Bench(f"{label}, batch {args.resnet_batch}, {args.resnet_size}²", _seeded(make), (x, y),
                             lambda o, t: ce(o.float(), t), channels_last=device.type == "cuda"))
        elif name == "3c3d":
            x = torch.randn(args.cnn_batch, 3, 32, 32, generator=g).to(device)
            y = torch.randint(0, 10, (args.cnn_batch,), generator=g).to(device)
            out.append(Bench(f"3c3d CNN, batch {args.cnn_batch}", _seeded(CNN3c3d), (x, y),
                             lambda o, t: ce(o.float(), t)))
        else:
            raise SystemExit(f"unknown model {name!r}: choose from gpt, resnet50, 3c3d")
    return out


# ------------------------------------------------------------------------------------------------ timing
class Trainer:
    """One copy of a model with its own fused AdamW, stepping on a fixed batch under bf16 autocast."""

    def __init__(self, bench: Bench, device: torch.device) -> None:
        self.bench, self.device = bench, device
        model = bench.build().to(device)
        if bench.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused) if fused else \
            torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = bench.batch
        self.x = x.contiguous(memory_format=torch.channels_last) if bench.channels_last else x
        self.y = y
        self.scope: Any = None

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.model(self.x)
        self.bench.loss(out, self.y).backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, synchronized at the end."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return time.perf_counter() - t0

    def watch(self, logdir: str, every: int) -> None:
        self.unwatch()
        self.scope = gradscope.watch(self.model, logdir, every=every, optimizer=self.opt)

    def unwatch(self) -> None:
        if self.scope is not None:
            self.scope.close()
            self.scope = None

    def static_bytes(self) -> int:
        """Bytes this copy holds between steps: parameters and optimizer state (gradients are set to None)."""
        n = sum(p.numel() * p.element_size() for p in self.model.parameters())
        for st in self.opt.state.values():
            n += sum(t.numel() * t.element_size() for t in st.values() if isinstance(t, torch.Tensor))
        return n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratio(plain: Trainer, watched: Trainer, *, pairs: int, block: int) -> tuple[float, float, float, float]:
    """(median, q1, q3) of watched ÷ plain block times over interleaved pairs, and plain seconds per step."""
    ratios: list[float] = []
    plain_steps: list[float] = []
    for i in range(pairs):
        if i % 2 == 0:
            tp = plain.run(block)
            tw = watched.run(block)
        else:
            tw = watched.run(block)
            tp = plain.run(block)
        ratios.append(tw / tp)
        plain_steps.append(tp / block)
    qs = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), qs[0], qs[2], statistics.median(plain_steps)


@contextlib.contextmanager
def _sync_warnings(device: torch.device) -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings ``set_sync_debug_mode("warn")`` raises on each synchronizing CUDA call."""
    caught: list[warnings.WarningMessage] = []
    if device.type != "cuda":
        yield caught
        return
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield rec
        finally:
            torch.cuda.set_sync_debug_mode("default")
            caught.extend(rec)


def _syncs(t: Trainer) -> int:
    with _sync_warnings(t.device) as rec:
        t.step()
    return sum("synchroniz" in str(w.message) for w in rec)


def syncs_per_step(plain: Trainer, watched: Trainer, logdir: str) -> tuple[int, int] | None:
    """Host syncs gradscope adds to (an unrecorded step, a recorded step); None off CUDA."""
    if plain.device.type != "cuda":
        return None
    base = _syncs(plain)
    watched.watch(logdir, every=4)
    try:
        for _ in range(9):   # warm-up records 0-4; then 5, 6, 7 unrecorded, 8 recorded (at its optimizer step)
            watched.step()
        unrec = max(_syncs(watched) for _ in range(3))   # steps 9, 10, 11: unrecorded
        rec = _syncs(watched)                            # step 12: recorded
    finally:
        watched.unwatch()
    return unrec - base, rec - base


def peak_memory(plain: Trainer, watched: Trainer, logdir: str, steps: int) -> float | None:
    """Extra peak memory of a step at every=1, as a share of the plain step's own peak; None off CUDA."""
    if plain.device.type != "cuda":
        return None
    dev = plain.device
    plain.run(1)
    torch.cuda.reset_peak_memory_stats(dev)
    plain.run(steps)
    p = torch.cuda.max_memory_allocated(dev)
    watched.watch(logdir, every=1)
    try:
        watched.run(1)
        torch.cuda.reset_peak_memory_stats(dev)
        watched.run(steps)
        w = torch.cuda.max_memory_allocated(dev)
    finally:
        watched.unwatch()
    own = p - watched.static_bytes()   # the plain step's peak, less what the other copy holds at rest
    return (w - p) / max(own, 1)


@dataclass
class Row:
    name: str
    plain_ms: float
    default: tuple[float, float, float]
    every: tuple[float, float, float]
    unrecorded: tuple[float, float, float]
    syncs: tuple[int, int] | None
    memory: float | None


def measure(bench: Bench, device: torch.device, args: argparse.Namespace) -> Row:
    plain, watched = Trainer(bench, device), Trainer(bench, device)
    with tempfile.TemporaryDirectory() as tmp:
        for t in (plain, watched):
            t.run(args.warmup)    # kernels chosen, allocator warm
        results: dict[str, tuple[float, float, float]] = {}
        plain_ms = []
        for label, every in (("default", DEFAULT_EVERY), ("every", 1),
                             ("unrecorded", UNRECORDED_EVERY)):
            watched.watch(f"{tmp}/{label}", every=every)
            watched.run(DEFAULT_WARMUP)   # the always-recorded first steps
            med, q1, q3, sec = ratio(plain, watched, pairs=args.pairs, block=args.block)
            watched.unwatch()
            results[label] = (med, q1, q3)
            plain_ms.append(sec * 1e3)
        syncs = syncs_per_step(plain, watched, f"{tmp}/syncs")
        mem = peak_memory(plain, watched, f"{tmp}/memory", steps=3)
    return Row(bench.name, statistics.median(plain_ms), results["default"], results["every"],
               results["unrecorded"], syncs, mem)


def _fmt(r: tuple[float, float, float], budget: float) -> str:
    mark = "" if r[0] <= budget else " ✗"
    return f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f}){mark}"


def table(rows: list[Row], device: torch.device) -> str:
    head = ("| model | plain ms/step | default (every 20) | every step | unrecorded only | "
            "syncs unrecorded / recorded | peak memory every step |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        syncs = "n/a (CPU)" if r.syncs is None else f"{r.syncs[0]} / {r.syncs[1]}"
        mem = "n/a (CPU)" if r.memory is None else f"{100 * r.memory:+.1f}%"
        lines.append(f"| {r.name} | {r.plain_ms:.1f} | {_fmt(r.default, BUDGET_DEFAULT)} | "
                     f"{_fmt(r.every, BUDGET_EVERY_STEP)} | {_fmt(r.unrecorded, BUDGET_UNRECORDED)} | "
                     f"{syncs} | {mem} |")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines.append("")
    lines.append(f"device: {name}; torch {torch.__version__}; gradscope {gradscope.__version__}; ratios: median "
                 f"(IQR) of watched ÷ plain block times; ✗ = over budget")
    lines.append(f"budgets: default ≤ {BUDGET_DEFAULT}×, unrecorded ≤ {BUDGET_UNRECORDED}×, every step ≤ "
                 f"{BUDGET_EVERY_STEP}×, syncs ≤ {BUDGET_SYNCS_UNRECORDED} / {BUDGET_SYNCS_RECORDED}, peak memory ≤ "
                 f"+{100 * BUDGET_PEAK_MEMORY:.0f}% at every=1")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--models", default="gpt,resnet50,3c3d", type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--device", default=None, help="default: cuda when available (required unless --smoke)")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--block", type=int, default=20, help="steps per timed block (20: one record per block)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gpt-layers", type=int, default=12)
    p.add_argument("--gpt-d", type=int, default=1024)
    p.add_argument("--gpt-seq", type=int, default=512)
    p.add_argument("--gpt-batch", type=int, default=16)
    p.add_argument("--gpt-vocab", type=int, default=32768)
    p.add_argument("--resnet-batch", type=int, default=128)
    p.add_argument("--resnet-size", type=int, default=224)
    p.add_argument("--cnn-batch", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 pair of 2-step blocks: checks it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.pairs, args.block, args.warmup = 1, 2, 1
        args.gpt_layers, args.gpt_d, args.gpt_seq, args.gpt_batch, args.gpt_vocab = 2, 32, 8, 2, 64
        args.resnet_batch, args.resnet_size, args.cnn_batch = 2, 32, 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda" and not args.smoke:
        print("benchmarks/gpu.py needs a CUDA device (or --smoke to check that it runs on a CPU)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for bench in benches(args, device):
        print(f"measuring {bench.name} ...", file=sys.stderr, flush=True)
        rows.append(measure(bench, device, args))
    print(table(rows, device))
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)   # "replacing the earlier log" etc.
        raise SystemExit(main())
