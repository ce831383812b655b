"""Underfitting says whether training longer helps (issue 11.4: "still improving at the end" belongs in
underfitting): a training loss still falling significantly at the end puts "train longer" first; one that has
levelled off demotes it and says why."""

from __future__ import annotations

import numpy as np

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind
from gradscope.judge.rules.fitting import end_trend
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import healthy_run, set_metric


def _underfit(losses: np.ndarray) -> list[FixKind]:
    """A 10-class run with train error 60% and validation 62% (high bias), and the given training losses."""
    run = healthy_run(n=len(losses) * 10, every=10)
    steps = np.arange(len(losses)) * 10 + 9
    set_metric(run, "train_loss", steps, losses)
    set_metric(run, "train_acc", steps, np.full(len(losses), 0.40))
    set_metric(run, "val_acc", steps, np.full(len(losses), 0.38))
    f = diagnose(run).by_code(Code.UNDERFITTING)[0]
    return [fx.kind for fx in f.fixes]


def test_still_falling_at_the_end_puts_train_longer_first() -> None:
    losses = np.linspace(3.4, 1.6, 20) + 0.01 * np.sin(np.arange(20))
    run = healthy_run(n=200, every=10)
    set_metric(run, "train_loss", np.arange(20) * 10 + 9, losses)
    t = end_trend(run, Thresholds())
    assert t is not None and t["falling"] and float(t["slope_high"]) < 0
    assert _underfit(losses)[0] is FixKind.TRAIN_LONGER


def test_levelled_off_demotes_train_longer_and_says_why() -> None:
    rng = np.random.default_rng(0)
    losses = np.concatenate([np.linspace(3.4, 1.6, 10), 1.6 + 0.02 * rng.standard_normal(10)])
    run = healthy_run(n=200, every=10)
    set_metric(run, "train_loss", np.arange(20) * 10 + 9, losses)
    t = end_trend(run, Thresholds())
    assert t is not None and not t["falling"]
    kinds = _underfit(losses)
    assert kinds[0] is not FixKind.TRAIN_LONGER and kinds[-1] is FixKind.TRAIN_LONGER


def test_too_few_values_say_nothing() -> None:
    run = healthy_run(n=40, every=10)
    set_metric(run, "train_loss", [9, 19, 29, 39], [2.3, 2.0, 1.8, 1.7])
    assert end_trend(run, Thresholds()) is None
