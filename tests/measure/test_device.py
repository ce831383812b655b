"""Device-correct by construction, checked without a GPU.

A tensor created without ``device=`` lands on the *default* device. On a CUDA run that is the CPU, and
mixing it with the CUDA activations crashes the user's first step (``input_stats`` stacked a CPU
``torch.tensor(float(n))`` with CUDA tensors). CI has no GPU, so these tests make the default device a
different one, ``meta``, while the model and the data live explicitly on the CPU: every factory call on the
measure side that forgets ``device=`` then builds a meta tensor, which fails loudly as soon as it meets a
real one (or is read). Plus a lint-style AST scan of ``gradscope/measure/*.py``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.schema import LAYER_FIELDS

L = {f: i for i, f in enumerate(LAYER_FIELDS)}
CPU = torch.device("cpu")
MEASURE = Path(gradscope.__file__).parent / "measure"

FACTORIES = frozenset({
    "tensor", "as_tensor", "scalar_tensor", "zeros", "ones", "full", "empty", "empty_strided", "arange",
    "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm", "normal", "tril_indices",
    "triu_indices", "sparse_coo_tensor", "complex", "polar",
})
"""``torch.<name>(...)`` calls that create a tensor on the default device unless given ``device=``
(``*_like`` and ``Tensor.new_*`` inherit their argument's device and are always fine)."""


@contextmanager
def default_device(device: str) -> Iterator[None]:
    """Make ``device`` torch's default device for the block; restore the previous default in a finally."""
    prev = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None if prev == CPU else prev)


class ConvTanh(nn.Module):
    """Floating-point image input: conv + batch norm (channels-first units), a tanh applied as a function
    (saturation statistic) and a ReLU head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        return self.head(F.relu(self.fc(h.flatten(1))))


class Tokens(nn.Module):
    """Integer-token input: the first tensor gradscope sees is int64 (no input statistics), an Embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc(self.emb(tok))).mean(1))


class DictIn(nn.Module):
    """A dict batch (Hugging Face style): ``{"x": features, "mask": bool}``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = torch.sigmoid(self.fc(batch["x"])) * batch["mask"].unsqueeze(-1)
        return self.head(h)


class TupleIn(nn.Module):
    """A tuple batch ``(features, extra)``: the first floating-point tensor is the input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, extra = batch
        return self.head(F.relu(self.fc(x)) + extra)


class Recurrent(nn.Module):
    """An LSTM (one atomic layer, tuple output) on a float sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 10, batch_first=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


Case = tuple[Callable[[], nn.Module], Callable[[torch.Generator], tuple[Any, torch.Tensor]]]


def _g_randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=CPU)


CASES: dict[str, Case] = {
    "float-image": (ConvTanh, lambda g: (_g_randn(g, 8, 3, 8, 8) * 50 + 100,
                                         torch.randint(0, 4, (8,), generator=g, device=CPU))),
    "int-tokens": (Tokens, lambda g: (torch.randint(0, 50, (8, 6), generator=g, device=CPU),
                                      torch.randint(0, 5, (8,), generator=g, device=CPU))),
    "dict": (DictIn, lambda g: ({"x": _g_randn(g, 8, 4, 7), "mask": torch.ones(8, 4, dtype=torch.bool, device=CPU)},
                                torch.randint(0, 3, (8, 4), generator=g, device=CPU))),
    "tuple": (TupleIn, lambda g: ((_g_randn(g, 8, 7), _g_randn(g, 8, 12)),
                                  torch.randint(0, 3, (8,), generator=g, device=CPU))),
    "rnn": (Recurrent, lambda g: (_g_randn(g, 8, 4, 5), torch.randint(0, 2, (8,), generator=g, device=CPU))),
}


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _train_watched(name: str, logdir: Path, *, every: int, steps: int, tensorboard: bool) -> nn.Module:
    """Build the model and batches on the CPU, then attach gradscope and train with ``meta`` as the default
    device. SGD: its step creates no tensor of its own (Adam's ``torch.tensor(0.)`` step counter would)."""
    make, data = CASES[name]
    torch.manual_seed(0)
    with torch.device(CPU):
        model = make()
    g = torch.Generator(device=CPU).manual_seed(1)
    batches = [data(g) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with default_device("meta"):
        assert torch.empty(1).device.type == "meta"   # the trap is armed
        with gradscope.watch(model, logdir, every=every, warmup=2, tensorboard=tensorboard,
                             histograms=1 if tensorboard else None) as scope:
            for x, y in batches:
                opt.zero_grad()
                _loss(model(x), y).backward()
                opt.step()
            scope.log(train_loss=1.0)
    assert torch.empty(1).device == CPU   # restored
    return model


@pytest.mark.parametrize("every", [1, 20])
@pytest.mark.parametrize("name", sorted(CASES))
def test_watched_training_creates_no_tensor_on_the_default_device(tmp_path: Path, name: str, every: int) -> None:
    steps = 6
    model = _train_watched(name, tmp_path, every=every, steps=steps, tensorboard=False)
    assert all(p.device == CPU and torch.isfinite(p).all() for p in model.parameters())
    log = read_log(log_path(tmp_path))
    recorded = [r.step for r in log.steps]
    assert recorded == (list(range(steps)) if every == 1 else [0, 1])   # warmup=2, then every 20th
    for rec in log.steps:
        rows = [row for row in rec.layers if row is not None]
        assert rows
        for row in rows:
            count, var = row[L["count"]], row[L["var"]]
            assert count is not None and count > 0 and var is not None and math.isfinite(var)
        assert rec.grad_norm is not None and rec.grad_norm > 0
        if name in ("float-image", "dict", "tuple", "rnn") and rec.step < 2:
            assert rec.input is not None and rec.input.count > 0   # the floating-point input path ran
    if name == "float-image":   # pixel-like input: mean ~100, std ~50
        first = log.steps[0].input
        assert first is not None and first.mean is not None and first.std is not None
        assert 80 < first.mean < 120 and 35 < first.std < 65
    if name == "int-tokens":
        assert log.steps[0].input is None   # integer input: no input statistics


def test_histograms_and_tensorboard_under_a_foreign_default_device(tmp_path: Path) -> None:
    """The TensorBoard mirror with histograms on every recorded step (``bin_tensors``) under a meta default."""
    _train_watched("float-image", tmp_path, every=1, steps=3, tensorboard=True)
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert "gradscope/weights/conv.weight" in tags and "gradscope/grads/fc.weight" in tags
    events = acc.Histograms("gradscope/weights/conv.weight")
    assert len(events) == 3
    assert events[0].histogram_value.num == 6 * 3 * 3 * 3


class ScalarParam(nn.Module):
    """A model with a one-element parameter (a learned temperature): ``Watch._header`` takes its init std."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.ones((), device=CPU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / self.temperature


def test_one_element_parameter_under_a_foreign_default_device(tmp_path: Path) -> None:
    """The header's init moments of a one-element parameter (its std is a created zero: it once had no
    ``device=``)."""
    torch.manual_seed(0)
    with torch.device(CPU):
        model = ScalarParam()
    x, y = torch.randn(8, 4, device=CPU), torch.randint(0, 3, (8,), device=CPU)
    with default_device("meta"), gradscope.watch(model, tmp_path, every=1, tensorboard=False):
        F.cross_entropy(model(x), y).backward()
    header = read_log(log_path(tmp_path)).header
    assert header is not None
    temp = next(p for p in header.params if p.name == "temperature")
    assert temp.init_std == 0.0 and temp.init_mean == 1.0


def _factory_calls_without_device(path: Path) -> list[str]:
    """``torch.<factory>(...)`` calls in ``path`` that pass no ``device=`` (a ``**kwargs`` counts as passing)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if any(k.arg == "device" or k.arg is None for k in node.keywords):
            continue
        bad.append(f"{path.name}:{node.lineno}: torch.{f.attr}(...) without device=")
    return bad


_MEASURE_FILES = sorted(MEASURE.glob("*.py"))


@pytest.mark.parametrize("path", _MEASURE_FILES, ids=lambda p: p.name)
def test_every_factory_call_on_the_measure_side_names_its_device(path: Path) -> None:
    assert _factory_calls_without_device(path) == []


def test_the_device_lint_finds_what_it_should() -> None:
    """The scan itself: it must flag a bare factory call and accept device=, **kwargs and *_like."""
    import tempfile

    src = ("import torch\n"
           "a = torch.zeros(())\n"
           "b = torch.tensor(1.0, device=x.device)\n"
           "c = torch.full((2,), 0.0, **kw)\n"
           "d = torch.zeros_like(a)\n"
           "e = a.new_zeros(3)\n")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "probe.py"
        p.write_text(src)
        assert _factory_calls_without_device(p) == ["probe.py:2: torch.zeros(...) without device="]
    assert len(_MEASURE_FILES) >= 5   # the glob found the measure side
