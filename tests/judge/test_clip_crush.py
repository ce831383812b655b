"""Updates too small because clipping keeps a sliver of every step (issue 11: a GradScaler loop that clips
before ``unscale_`` was told to raise the learning rate 800×): the finding names the clipping, and its fix is
the clipping, never a higher learning rate."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import gradscope
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind
from gradscope.judge.rules.optim import _power_of_two
from gradscope.store.load import load_run


def _clipped_run(tmp_path: Path, max_norm: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt) as scope:
        for _ in range(30):
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
            opt.step()
            scope.log(train_loss=float(loss))


def test_a_clip_threshold_far_below_the_gradient_is_named_not_the_learning_rate(tmp_path: Path) -> None:
    _clipped_run(tmp_path, max_norm=1e-5)
    lr = diagnose(load_run(tmp_path)).by_code(Code.LEARNING_RATE)
    assert lr and "clipping" in lr[0].message and lr[0].evidence["clip_kept_fraction"] < 1e-2
    kinds = [fx.kind for fx in lr[0].fixes]
    assert kinds == [FixKind.CLIPPING]
    assert "Raise the clipping threshold" in lr[0].fixes[0].summary


def test_clipping_that_keeps_most_of_the_step_is_not_blamed(tmp_path: Path) -> None:
    _clipped_run(tmp_path, max_norm=1e3)     # never binds
    for f in diagnose(load_run(tmp_path)).by_code(Code.LEARNING_RATE):
        assert "clip_kept_fraction" not in f.evidence


def test_a_loss_scale_is_a_power_of_two() -> None:
    assert _power_of_two(65536.0) and _power_of_two(65536.0 * 1.03)
    assert not _power_of_two(50000.0) and not _power_of_two(64.0)
