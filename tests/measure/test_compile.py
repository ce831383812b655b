"""torch.compile: gradscope causes no graph break, changes no number, and still records what it can.

Inside a compiled graph gradscope's layer hooks do nothing (they return at once when dynamo traces them),
so per-layer activation statistics are not recorded for compiled code; the root module's hooks, the
end-of-backward callback and the optimizer hooks run outside the graph, so steps, parameter gradient norms,
weight norms, update ratios and NaN/Inf checks of the model output are. See docs/setups.md.

The tests compile with the ``aot_eager`` backend: it runs the same dynamo capture and AOT-autograd split as
inductor (where hooks and graph breaks live) without the C++ build, which takes ~50 s cold on this machine.
``GRADSCOPE_TEST_INDUCTOR=1`` runs the identical-training test with inductor too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.schema import PARAM_FIELDS

dynamo = pytest.importorskip("torch._dynamo")
P = {f: i for i, f in enumerate(PARAM_FIELDS)}
BACKENDS = ["aot_eager"] + (["inductor"] if os.environ.get("GRADSCOPE_TEST_INDUCTOR") == "1" else [])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


def _seq() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def _make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return Net() if kind == "custom" else _seq()


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    dynamo.reset()


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(steps)]


@pytest.mark.parametrize("kind", ["custom", "sequential"])
def test_no_graph_break_with_gradscope_attached(tmp_path: Path, kind: str) -> None:
    model = _make(kind)
    x = _data(1)[0][0]
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False):
        explain = dynamo.explain(model)(x)        # a training forward with grad enabled: the hooks are live
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def _train(model: nn.Module, compiled: nn.Module, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, y in _data(steps):
        opt.zero_grad()
        loss = F.cross_entropy(compiled(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attach", ["before", "after"])
def test_compiled_training_is_bit_identical_and_steps_are_recorded(tmp_path: Path, attach: str, backend: str) -> None:
    steps = 6
    plain = _make("custom")
    want = _train(plain, torch.compile(plain, backend=backend), steps)
    dynamo.reset()
    dynamo.utils.counters.clear()

    model = _make("custom")
    if attach == "before":
        scope = gradscope.watch(model, tmp_path, every=2, tensorboard=False)
        compiled = torch.compile(model, backend=backend)
    else:
        compiled = torch.compile(model, backend=backend)
        scope = gradscope.watch(compiled, tmp_path, every=2, tensorboard=False)
    with scope:
        got = _train(model, compiled, steps)
    assert got == want                                             # bit-identical, not approximately
    for p, q in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)

    log = read_log(log_path(tmp_path))
    assert [la.name for la in log.header.layers] == ["fc1", "fc2", "out"]   # not "_orig_mod.fc1"
    assert [r.step for r in log.steps] == [0, 1, 2, 3, 4]
    assert [s for r in log.steps for s, _ in r.grad_norm_steps] + [s for s, _ in log.grad_norms] == list(range(6))
    # Parameter gradients are read outside the graph: the same numbers as an eager step.
    ref = _make("custom")
    x, y = _data(1)[0]
    F.cross_entropy(ref(x), y).backward()
    for j, p in enumerate(ref.parameters()):
        row = log.steps[0].params[j]
        assert row is not None and row[P["grad_norm"]] == pytest.approx(p.grad.norm().item(), rel=1e-5)
        assert row[P["norm"]] == pytest.approx(p.detach().norm().item(), rel=1e-5)
    # Inside the graph the layer hooks do nothing: no per-layer rows (documented), and no recompiles.
    assert all(row is None for r in log.steps for row in r.layers)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not dynamo.utils.counters["graph_break"]


def test_after_close_compiled_model_has_no_gradscope_hooks(tmp_path: Path) -> None:
    model = _make("custom")
    compiled = torch.compile(model, backend="aot_eager")
    with gradscope.watch(compiled, tmp_path, tensorboard=False):
        _train(model, compiled, 2)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not compiled._forward_pre_hooks and not compiled._forward_hooks
