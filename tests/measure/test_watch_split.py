"""The pieces of the write side (issue 10): the clock's public API, one field list per row, the check kinds,
and layer names in messages as the findings write them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.measure.assemble import layer_row, param_row
from gradscope.measure.checks import CheckKind, read
from gradscope.measure.clock import StepClock
from gradscope.measure.reductions import RAW_LAYER_COLUMNS
from gradscope.measure.watch import layer_label
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS


def test_rows_follow_the_schema_field_lists() -> None:
    raw = {c: float(i + 1) for i, c in enumerate(RAW_LAYER_COLUMNS)}
    row = layer_row(raw, count=10, calls=2)
    assert len(row) == len(LAYER_FIELDS)
    named = dict(zip(LAYER_FIELDS, row, strict=True))
    assert named["count"] == 10 and named["calls"] == 2 and named["mean"] == pytest.approx(0.1)
    assert named["units"] == 7 and named["dead"] == 9 and named["grad_norm"] == pytest.approx(12**0.5)
    prow = param_row(3.0, 4.0, 1.0, 2.0)
    assert prow is not None and dict(zip(PARAM_FIELDS, prow, strict=True)) == {
        "grad_norm": 3.0, "norm": 4.0, "update_ratio": 0.5, "grad_nonfinite": 0.0}
    assert param_row(None, None, None, None) is None
    nan = float("nan")
    gaps = layer_row({**raw, "nonfinite": nan, "dead": nan, "gsq": nan}, count=0, calls=1)
    named = dict(zip(LAYER_FIELDS, gaps, strict=True))
    assert named["nonfinite"] is None and named["dead"] is None and named["grad_norm"] is None   # not measured


def test_check_kinds_keep_their_log_values() -> None:
    assert [int(k) for k in (CheckKind.ACTIVATION, CheckKind.GRADIENT, CheckKind.OUTPUT)] == [0, 1, 2]
    assert read([], [], find=True, scaler=False).first is None


@pytest.mark.parametrize("name", ["fc2", "encoder.layers.0.linear1", "2", "0.1", "", "blocks.3", "a-b.0"])
def test_layer_label_is_the_findings_label(name: str) -> None:
    from gradscope.judge.rules._common import label

    assert layer_label(name) == label(name)


def test_clock_begin_and_end_forward_are_the_framework_api(tmp_path: Path) -> None:
    """A framework that runs the training forward outside the root module (Lightning's ``training_step``)
    marks it with ``scope.clock.begin_forward`` / ``end_forward``: steps, layers and checks as usual."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, tmp_path, every=1, optimizer=opt, tensorboard=False) as scope:
        assert isinstance(scope.clock, StepClock)
        for _ in range(3):
            x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
            scope.clock.begin_forward(model, (x,))
            h = x
            for m in model:                      # the submodules are called, the root's forward is not
                h = m(h)
            loss = F.cross_entropy(h, y)
            scope.clock.end_forward(model, loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert scope.step == 2
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2]
    assert all(r.layers[0] is not None and r.grad_norm is not None for r in log.steps)
    assert log.activations == {"0": "tanh"}


def test_hugging_face_conv1d_fans_are_read_the_right_way_round(tmp_path: Path) -> None:
    """GPT-2's ``Conv1D`` stores its weight (in, out): the header must give fan_in = in, as for nn.Linear, or
    every init judgement of a GPT-2 model compares against the wrong Glorot/He target (issue 11)."""
    transformers = pytest.importorskip("transformers")
    from gradscope.store.load import load

    conv = transformers.pytorch_utils.Conv1D(nf=144, nx=48)     # c_attn of a 48-wide GPT-2: 48 → 3 × 48
    model = nn.Sequential(nn.Linear(8, 48), conv)
    with gradscope.watch(model, tmp_path, tensorboard=False) as scope:
        model(torch.randn(4, 8)).sum().backward()
        scope.log(loss=0.0)
    layers = {la.name: la for la in load(tmp_path, warn=False)[0].layers}
    assert (layers["1"].fan_in, layers["1"].fan_out) == (48, 144)
    assert (layers["0"].fan_in, layers["0"].fan_out) == (8, 48)
