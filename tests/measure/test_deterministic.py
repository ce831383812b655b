"""Deterministic-safe: gradscope must never raise or warn under ``torch.use_deterministic_algorithms(True)``.

gradscope's hooks run inside the user's forward and backward, so an op with no deterministic CUDA kernel there
(``torch.histc`` in the TensorBoard histograms was one) fails a deterministic user run on its first recorded
step. CI has no GPU: these tests record every ATen op of a watched training on the CPU and check that the ops
gradscope adds are none of ``reductions.NONDETERMINISTIC_CUDA_OPS``, scan the source for them, and run a
watched training under the deterministic flag with every warning turned into an error.
"""

from __future__ import annotations

import ast
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradscope
from gradscope.measure.reductions import NONDETERMINISTIC_CUDA_OPS
from gradscope.store.jsonl import log_path, read_log

MEASURE = Path(gradscope.__file__).parent / "measure"


class OpNames(TorchDispatchMode):
    """Counts every ATen op by overload-packet name; ``bincount`` with weights, ``index_put_`` with
    ``accumulate=True`` and a floating-point ``cumsum`` get the condition names used in
    ``NONDETERMINISTIC_CUDA_OPS``."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("cumsum", "cumsum_") and args and args[0].is_floating_point():
            name = "cumsum_float"
        if name == "bincount" and (kwargs.get("weights") is not None or (len(args) > 1 and args[1] is not None)):
            name = "bincount_weighted"
        if name in ("index_put", "index_put_", "_index_put_impl_") and (
                kwargs.get("accumulate") or (len(args) > 3 and args[3])):
            name = "index_put_accumulate"
        self.names[name] += 1
        return func(*args, **kwargs)


class Net(nn.Module):
    """Conv + batch norm + a tanh (the saturation path), an Embedding-free MLP head: every statistic runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        return self.head(torch.tanh(self.fc(h.flatten(1))))


def _train(logdir: Path | None, steps: int = 4, *, rec: OpNames | None = None) -> list[float]:
    """``steps`` SGD steps of ``Net``; watched (every step, TensorBoard histograms on every record) when
    ``logdir`` is given; ops recorded by ``rec`` from the first forward to the last optimizer step."""
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scope = gradscope.watch(model, logdir, every=1, histograms=1) if logdir is not None else None
    losses = []
    try:
        for x, y in batches:
            if rec is not None:
                with rec:
                    loss = _step(model, opt, x, y)
            else:
                loss = _step(model, opt, x, y)
            losses.append(loss)
    finally:
        if scope is not None:
            scope.close()
    return losses


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_gradscope_adds_no_op_without_a_deterministic_cuda_kernel(tmp_path: Path) -> None:
    plain, watched = OpNames(), OpNames()
    _train(None, rec=plain)
    _train(tmp_path, rec=watched)
    added = {name for name, n in watched.names.items() if n > plain.names.get(name, 0)}
    assert "bincount" in added or "histc" in added, "histograms were not binned: the check saw nothing"
    assert sorted(added & NONDETERMINISTIC_CUDA_OPS) == []
    forbidden = NONDETERMINISTIC_CUDA_OPS
    assert sorted(set(watched.names) & forbidden) == sorted(set(plain.names) & forbidden)


def test_op_recorder_sees_a_forbidden_op() -> None:
    """The recorder itself: ``torch.histc`` and a weighted ``bincount`` are named as the list names them."""
    rec = OpNames()
    with rec:
        torch.histc(torch.arange(4.0), bins=2)
        torch.bincount(torch.tensor([0, 1]), weights=torch.ones(2))
        torch.arange(3.0).cumsum(0)
        torch.arange(3).cumsum(0)    # integer: deterministic, not flagged
    assert set(rec.names) & NONDETERMINISTIC_CUDA_OPS == {"histc", "bincount_weighted", "cumsum_float"}


_CONDITIONS = {"bincount_weighted", "index_put_accumulate", "cumsum_float"}
"""Entries that depend on arguments (weights, accumulate, dtype): the dispatch recording checks them, the
source scan cannot."""
_CALL_NAMES = {n.rstrip("_") for n in NONDETERMINISTIC_CUDA_OPS if not n.startswith("_")} - _CONDITIONS


_HOST_MODULES = {"np", "numpy", "math", "statistics"}
"""Receivers whose ``median`` etc. run on the host (numpy arrays, floats): no torch kernel involved."""


@pytest.mark.parametrize("path", sorted(MEASURE.glob("*.py")), ids=lambda p: p.name)
def test_measure_source_calls_no_nondeterministic_op(path: Path) -> None:
    """AST scan: no ``torch.<op>(...)`` / ``x.<op>(...)`` / ``x.<op>_(...)`` call of a listed op, and
    ``bincount`` never with weights."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            host = isinstance(node.func.value, ast.Name) and node.func.value.id in _HOST_MODULES
            if attr.rstrip("_") in _CALL_NAMES and not host:
                bad.append(f"{path.name}:{node.lineno}: {attr}")
            if attr == "bincount" and (len(node.args) > 1 or any(k.arg == "weights" for k in node.keywords)):
                bad.append(f"{path.name}:{node.lineno}: bincount with weights")
    assert bad == []


def test_watched_training_is_warning_free_and_identical_under_deterministic_algorithms(tmp_path: Path) -> None:
    plain = _train(None)
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # any warning (torch's "nondeterministic" ones included) fails
            watched = _train(tmp_path)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    assert watched == plain   # bit-identical losses, deterministic flag or not
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2, 3]
    assert list(tmp_path.glob("*gradscope*")), "no TensorBoard mirror was written"
