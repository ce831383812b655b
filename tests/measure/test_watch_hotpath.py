"""The unrecorded step (issues 9.4/9.5): a fixed number of ATen ops whatever the depth, no activation kept
alive, and the first NaN/Inf step still exact (the layer too, when its output is still held at the end of
the forward pass). measure-B's tests/measure/test_op_counts.py counts the ReLU MLP; here a chain whose layer
outputs all stay alive, which is where a per-layer check would show."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning
from gradscope.store.jsonl import log_path, read_log
from tests.measure.test_op_counts import OpCounter


def _chain(depth: int, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)], nn.Linear(width, 3))


def _unrecorded_ops(depth: int, logdir: Path | None) -> int:
    model = _chain(depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    scope = gradscope.watch(model, logdir, every=10, warmup=1, tensorboard=False, optimizer=opt) if logdir else None
    counts = []
    for _ in range(3):
        c = OpCounter()
        with c:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        counts.append(c.total)
    if scope is not None:
        scope.close()
    return counts[2]   # step 2: not recorded


def test_unrecorded_step_ops_do_not_grow_with_depth_when_outputs_stay_alive(tmp_path: Path) -> None:
    added = {d: _unrecorded_ops(d, tmp_path / str(d)) - _unrecorded_ops(d, None) for d in (4, 32)}
    assert added[4] == added[32] <= 6, added   # one fused check of the forward, one norm of the gradients


def test_the_check_keeps_no_activation_alive(tmp_path: Path) -> None:
    """A Linear followed by ReLU: autograd frees the Linear's output during the forward pass; the end-of-
    forward check holds only a weak reference, so it is freed with the watch attached too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    seen: list[weakref.ref[torch.Tensor]] = []
    model[0].register_forward_hook(lambda m, a, o: seen.append(weakref.ref(o)))
    with gradscope.watch(model, tmp_path, every=10, warmup=1, tensorboard=False):
        for _ in range(3):
            out = model(torch.randn(4, 8))
            assert seen[-1]() is None
            out.sum().backward()


@pytest.mark.parametrize("step", [7, 12])
def test_first_nonfinite_step_and_layer_on_an_unrecorded_step(tmp_path: Path, step: int) -> None:
    model = _chain(6, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(GradscopeWarning, match=rf"first NaN/Inf at step {step} in activations of model\[3\]"), \
            gradscope.watch(model, tmp_path, every=50, tensorboard=False, optimizer=opt):
        for i in range(15):
            if i == step:
                with torch.no_grad():
                    model[3].weight[0, 0] = float("inf")
            opt.zero_grad()
            model(torch.randn(5, 4)).mean().backward()
            opt.step()
    log = read_log(log_path(tmp_path))
    assert [(r.step, r.where, r.layer) for r in log.nonfinite] == [(step, "activation", "3")]


def test_the_step_is_exact_when_the_layer_output_is_gone(tmp_path: Path) -> None:
    """Each Linear output feeds a ReLU and is freed before the end of the forward pass: the step is exact, the
    place is the first checked tensor that held the NaN/Inf (here the model output)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(GradscopeWarning, match="first NaN/Inf at step 9"), \
            gradscope.watch(model, tmp_path, every=50, tensorboard=False, optimizer=opt):
        for i in range(12):
            if i == 9:
                with torch.no_grad():
                    model[2].bias[0] = float("nan")
            opt.zero_grad()
            model(torch.randn(5, 4)).mean().backward()
            opt.step()
    (rec,) = read_log(log_path(tmp_path)).nonfinite
    assert rec.step == 9 and rec.where in ("activation", "output")
