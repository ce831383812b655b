"""A finding's confidence is a documented function of its evidence (issue 11.4).

For each rule whose confidence comes from gradscope/judge/confidence.py: two hand-built runs with the same fault,
one with stronger evidence (more steps, a larger margin past the threshold, an agreeing second signal); the
stronger gets a strictly higher confidence, both lie in (0, 1], the severity is the one the rule gives anyway,
and a second diagnosis gives the same number. No torch, no log files (tests/rulecases.py builds the runs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gradscope.judge.confidence import agree, confidence, fraction_margin, mean, ratio_margin, support
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Finding, NotEvaluated, Severity
from gradscope.judge.rules import (
    dead_relu,
    eval_mode_training,
    grad_not_zeroed,
    lr_plateau,
    overfitting,
    param_not_updated,
    poor_init,
    probabilities_as_logits,
    saturation,
    train_mode_eval,
    underfitting,
    unnormalized_input,
)
from gradscope.judge.rules._common import Context, RuleFunc
from gradscope.judge.rules.loop import probs_floor
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Loop, Run
from gradscope.store.schema import InputStats
from tests.rulecases import L, healthy_run, metrics_only_run, mlp, set_layer, set_metric, set_param

TH = Thresholds()
LEVEL = TH.confidence_support_level


# ------------------------------------------------------------------------------------------ the building blocks

def test_support_is_the_wilson_lower_bound_and_grows_with_the_steps() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(3, 3), (5, 7), (0, 4), (30, 30), (299, 300)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=2 * LEVEL - 1, method="wilson").low
        assert support(k, n, LEVEL) == pytest.approx(ref, abs=1e-12)
    assert support(3, 3, LEVEL) < support(30, 30, LEVEL) < support(300, 300, LEVEL) < 1.0
    assert support(2, 3, LEVEL) < support(3, 3, LEVEL)
    assert support(0, 0, LEVEL) == 0.0


def test_margins_saturate_and_signals_only_add() -> None:
    assert ratio_margin(10.0, 10.0) == 0.0 and ratio_margin(20.0, 10.0) == pytest.approx(0.5)
    assert ratio_margin(100.0, 10.0) == pytest.approx(0.9) and ratio_margin(5.0, 10.0) == 0.0
    assert fraction_margin(0.75, 0.5) == pytest.approx(0.5) and fraction_margin(1.0, 0.5) == 1.0
    assert fraction_margin(0.1, 0.3, 0.0) == pytest.approx(2 / 3) and fraction_margin(math.nan, 0.5) == 0.0
    assert agree() == 0.0 and agree(0.5) == 0.5 and agree(0.5, 0.5) == pytest.approx(0.75)
    assert mean(1.0, 0.0) == 0.5
    assert confidence(0.0, 0.5) == 0.5 and confidence(1.0, 0.5) == 1.0


# ------------------------------------------------------------------------------------------------ the runs

def dead(n: int, fraction: float) -> Run:
    run = healthy_run(mlp((20, 128, 100, 10)), n=n)
    set_layer(run, "dead", "fc2", np.round(100 * fraction))
    return run


def saturated(n: int, fraction: float) -> Run:
    run = healthy_run(mlp((20, 64, 64, 10), act="tanh"), n=n)
    set_layer(run, "saturated", "fc1", round(64 * fraction))
    return run


def offset_input(n: int, mean_: float) -> Run:
    """An input offset by ``mean_`` standard deviations, which reaches the first layer (its output is large)."""
    run = healthy_run(n=n)
    run.inputs = [(s, InputStats(mean=mean_, std=1.0, min=mean_ - 3, max=mean_ + 3, count=640, feature_std_min=0.8,
                                 feature_std_max=1.2, feature_mean_absmax=abs(mean_))) for s, _ in run.inputs]
    set_layer(run, "var", "fc1", 1e4)
    return run


def raw_input_inside(n: int, std: float) -> Run:
    """A raw input the model standardizes inside forward(): an info, surer the larger the raw scale."""
    run = healthy_run(n=n)
    run.inputs = [(s, InputStats(mean=0.0, std=std, min=-3 * std, max=3 * std, count=640)) for s, _ in run.inputs]
    return run


def mis_init(n: int, init_std: float, per_layer: float) -> Run:
    """ReLU layers initialized ``init_std`` (He: √(2/64) ≈ 0.18) whose activation variance falls ``per_layer``×
    per layer on the first steps."""
    run = healthy_run(mlp((20,) + (64,) * 6 + (10,), init_std=init_std), n=n)
    run.layer_stats["var"] *= per_layer ** np.arange(len(run.layers))[None, :]
    return run


def overfit_curve(n_evals: int, best: int, rise: float) -> Run:
    run = healthy_run(n=n_evals * 10, seed=n_evals)
    t = run.steps / run.steps[-1]
    set_metric(run, "train_loss", run.steps, 0.05 + 2.0 * np.exp(-5 * t))
    v = np.empty(n_evals)
    v[: best + 1] = np.linspace(2.0, 0.5, best + 1)
    v[best + 1:] = 0.5 * (1 + np.linspace(rise / (n_evals - best), rise, n_evals - best - 1))
    set_metric(run, "val_loss", run.steps[9::10], v)
    return run


def overfit_errors(train: float, val: float) -> Run:
    return metrics_only_run({"train_error": ([0, 1, 2], [0.5, 0.2, train]), "val_error": ([0, 1, 2], [0.5, 0.3, val])})


def high_bias(n: int, train_err: float) -> Run:
    st = list(range(n))
    errs = list(np.linspace(0.6, train_err, n))
    return metrics_only_run({"train_error": (st, errs), "val_error": (st, [e + 0.01 for e in errs])})


def flat_loss(n: int, level: float, val_factor: float) -> Run:
    """A 10-class classifier's training loss flat at ``level`` (chance: log 10 ≈ 2.30), validation × val_factor."""
    run = healthy_run(mlp((20, 64, 64, 10)), n=n)
    wiggle = 1 + 0.01 * np.sin(1.7 * np.arange(n))
    set_metric(run, "train_loss", run.steps, level * wiggle)
    set_metric(run, "val_loss", run.steps[::3], level * val_factor * np.ones(run.steps[::3].size))
    return run


def plateau(n: int, wiggle: float) -> Run:
    """Falls over the first third, then flat at 1.5 with a deterministic wiggle; learning rate constant."""
    run = healthy_run(n=n, losses=False)
    k = n // 3
    v = [2.3 - 0.8 * i / k if i < k else 1.5 * (1 + wiggle * math.sin(1.7 * i)) for i in range(n)]
    set_metric(run, "train_loss", run.steps, v)
    set_metric(run, "train_acc", run.steps, np.full(n, 0.6))
    return run


def not_in_optimizer(n: int) -> Run:
    run = healthy_run(n=n)
    for p in ("fc3.weight", "fc3.bias"):
        set_param(run, "update_ratio", p, 0.0)
    return run


def _loop(n: int, *, stale: Sequence[int] = (), evals: Sequence[int] = (), nograd: tuple[int, int] = (0, 0),
          probs: int = 0, cols: int = 10) -> Loop:
    """Loop records, one per step 0..n-1: the stale/eval steps given, ``nograd`` = (train-mode no-grad passes,
    of them repeated) on the last record, the first ``probs`` outputs rows of probabilities (the rest logits)."""
    steps = np.arange(n, dtype=np.int64)
    p = steps < probs
    nf, nr = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    nf[-1], nr[-1] = nograd
    return Loop(span=np.stack([steps, steps], axis=1), forwards=np.ones(n, dtype=np.int64),
                eval_forwards=np.isin(steps, evals).astype(np.int64), grad_checks=(steps > 0).astype(np.int64),
                eval_steps=np.asarray(evals, dtype=np.int64), stale_grad_steps=np.asarray(stale, dtype=np.int64),
                train_nograd_forwards=nf, train_nograd_repeats=nr,
                output_min=np.where(p, 0.01, -3.0), output_sum_lo=np.where(p, 1.0 - 1e-7, -2.0),
                output_sum_hi=np.where(p, 1.0 + 1e-7, 2.5), output_cols=np.full(n, cols, dtype=np.int64))


def looped(n: int, modes: dict[str, int] | None = None, losses: Sequence[float] = (), **kw: object) -> Run:
    run = healthy_run(n=n, losses=False)
    assert run.header is not None
    run.header = dataclasses.replace(run.header, extra={"mode_modules": modes} if modes else {})
    run.loop = _loop(n, **kw)  # type: ignore[arg-type]
    if losses:
        set_metric(run, "train_loss", np.arange(len(losses)) * 2, losses)
    return run


def stale_grads(n: int, stale: int) -> Run:
    return looped(n, stale=range(1, 1 + stale))


def eval_mode(n: int, evals: int) -> Run:
    return looped(n, {"Dropout": 1}, evals=range(n - evals, n))


def nograd(passes: int, repeats: int) -> Run:
    return looped(20, {"Dropout": 1}, nograd=(passes, repeats))


FLOOR10, CHANCE10 = probs_floor(10), math.log(10)


def probs_out(n: int, probs: int, progress: float | None) -> Run:
    """Probability rows on ``probs`` of ``n`` steps; the loss came ``progress`` of the way from chance to the
    cross-entropy-on-probabilities floor (None: no loss logged)."""
    losses: list[float] = []
    if progress is not None:
        low = CHANCE10 - progress * (CHANCE10 - FLOOR10)
        losses = list(np.linspace(CHANCE10, low, 8))
    return looped(n, losses=losses, probs=probs)


# ------------------------------------------------------------------------------------- weaker vs stronger

Case = tuple[str, RuleFunc, Callable[[], Run], Callable[[], Run], Severity, Context]

CASES: list[Case] = [
    # same fraction, more steps
    ("dead_relu: steps", dead_relu, lambda: dead(12, 0.7), lambda: dead(200, 0.7), Severity.WARNING, Context()),
    # same steps, larger margin
    ("dead_relu: margin", dead_relu, lambda: dead(60, 0.6), lambda: dead(60, 0.85), Severity.WARNING, Context()),
    ("saturation: steps", saturation, lambda: saturated(12, 0.7), lambda: saturated(200, 0.7), Severity.WARNING,
     Context()),
    ("saturation: margin", saturation, lambda: saturated(60, 0.55), lambda: saturated(60, 0.85), Severity.WARNING,
     Context()),
    ("unnormalized_input: records", unnormalized_input, lambda: offset_input(10, 5.0),
     lambda: offset_input(200, 5.0), Severity.WARNING, Context()),
    ("unnormalized_input: margin and criteria", unnormalized_input, lambda: offset_input(60, 4.0),
     lambda: offset_input(60, 40.0), Severity.WARNING, Context()),
    ("unnormalized_input: inside the model", unnormalized_input, lambda: raw_input_inside(60, 15.0),
     lambda: raw_input_inside(60, 150.0), Severity.INFO, Context()),
    ("poor_init: margin", poor_init, lambda: mis_init(40, 0.05, 0.2), lambda: mis_init(40, 0.005, 0.0064),
     Severity.WARNING, Context()),
    ("overfitting: rise and evaluations", overfitting, lambda: overfit_curve(6, 2, 0.3),
     lambda: overfit_curve(30, 5, 1.0), Severity.WARNING, Context()),
    ("overfitting: variance", overfitting, lambda: overfit_errors(0.02, 0.09), lambda: overfit_errors(0.01, 0.41),
     Severity.WARNING, Context()),
    ("underfitting: errors", underfitting, lambda: high_bias(3, 0.4), lambda: high_bias(40, 0.6),
     Severity.WARNING, Context(baseline_error=0.0)),
    ("underfitting: flat loss", underfitting, lambda: flat_loss(12, 2.0, 1.08), lambda: flat_loss(120, 2.3, 1.0),
     Severity.WARNING, Context()),
    ("lr_plateau: longer and flatter", lr_plateau, lambda: plateau(20, 0.004), lambda: plateau(90, 0.0005),
     Severity.WARNING, Context()),
    ("param_not_updated: steps", param_not_updated, lambda: not_in_optimizer(8), lambda: not_in_optimizer(60),
     Severity.WARNING, Context()),
    ("grad_not_zeroed: checks", grad_not_zeroed, lambda: stale_grads(5, 4), lambda: stale_grads(100, 99),
     Severity.WARNING, Context()),
    ("grad_not_zeroed: fraction", grad_not_zeroed, lambda: stale_grads(41, 24), lambda: stale_grads(41, 38),
     Severity.WARNING, Context()),
    ("eval_mode_training: steps", eval_mode_training, lambda: eval_mode(4, 3), lambda: eval_mode(100, 90),
     Severity.WARNING, Context()),
    ("train_mode_eval: passes", train_mode_eval, lambda: nograd(3, 1), lambda: nograd(50, 0), Severity.WARNING,
     Context()),
    ("train_mode_eval: Monte Carlo info", train_mode_eval, lambda: nograd(10, 9), lambda: nograd(10, 6),
     Severity.INFO, Context()),
    ("probabilities_as_logits: steps and floor", probabilities_as_logits, lambda: probs_out(10, 9, 0.6),
     lambda: probs_out(100, 100, 0.95), Severity.WARNING, Context()),
    ("probabilities_as_logits: info", probabilities_as_logits, lambda: probs_out(3, 3, None),
     lambda: probs_out(100, 100, None), Severity.INFO, Context()),
]


def _one(result: list[Finding] | NotEvaluated) -> Finding:
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stronger_evidence_gets_a_higher_confidence(case: Case) -> None:
    _, rule, weak, strong, severity, ctx = case
    fw, fs = _one(rule(weak(), TH, ctx)), _one(rule(strong(), TH, ctx))
    assert fw.severity is severity and fs.severity is severity
    assert 0.0 < fw.confidence < fs.confidence <= 1.0, (fw.confidence, fs.confidence)
    if severity is Severity.WARNING:
        assert fw.confidence >= TH.confidence_floor     # past every threshold: at least the floor


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_confidence_is_the_same_on_every_diagnosis(case: Case) -> None:
    _, rule, _, strong, _, ctx = case
    run = strong()
    a, b = _one(rule(run, TH, ctx)), _one(rule(run, TH, ctx))
    assert a.confidence == b.confidence
    code = a.code
    d1, d2 = diagnose(run, baseline_error=ctx.baseline_error), diagnose(strong(), baseline_error=ctx.baseline_error)
    assert [f.confidence for f in d1.by_code(code)] == [f.confidence for f in d2.by_code(code)]


# ------------------------------------------------------------------------------ agreeing signals, formulas

def test_overfitting_errors_and_curve_agreeing_beat_either_alone() -> None:
    run = overfit_curve(10, 3, 0.4)
    curve_only = _one(overfitting(run, TH, Context())).confidence
    set_metric(run, "train_error", run.steps[[0, -1]], [0.5, 0.01])
    set_metric(run, "val_error", run.steps[[9, -1]], [0.5, 0.2])
    both = _one(overfitting(run, TH, Context()))
    assert both.severity is Severity.WARNING and both.confidence > curve_only
    s_err = ratio_margin(0.19, TH.variance)
    assert both.confidence > confidence(s_err, TH.confidence_floor)


def test_underfitting_validation_agreeing_raises_it() -> None:
    no_val = flat_loss(60, 2.2, 1.0)
    del no_val.metrics["val_loss"]
    with_val = flat_loss(60, 2.2, 1.0)
    assert _one(underfitting(with_val, TH, Context())).confidence > _one(underfitting(no_val, TH, Context())).confidence


def test_dead_relu_confidence_is_the_documented_formula() -> None:
    run = dead(60, 0.8)
    f = _one(dead_relu(run, TH, Context()))
    rows = 60 - (run.header.dead_window - 1)   # type: ignore[union-attr]
    tail = rows - int(rows * (1 - TH.tail_fraction))
    want = confidence(mean(support(tail, tail, LEVEL), fraction_margin(0.8, TH.dead_fraction)), TH.confidence_floor)
    assert f.confidence == pytest.approx(want, rel=0.02)


def test_param_not_updated_without_a_recorded_lr_is_less_sure() -> None:
    run = not_in_optimizer(30)
    with_lr = _one(param_not_updated(run, TH, Context())).confidence
    run.lr = []
    without = _one(param_not_updated(run, TH, Context()))
    n = without.evidence["judged_steps"]["fc3.weight"]
    assert without.confidence == pytest.approx(TH.confidence_no_lr_factor * n / (n + TH.not_updated_min_steps))
    assert without.confidence < with_lr


def test_poor_init_symmetric_layer_alone_has_a_confidence_above_the_floor() -> None:
    run = healthy_run([L("fc1", 20, 64, init_std=0.0), L("fc2", 64, 64), L("out", 64, 10, None)], n=30)
    f = _one(poor_init(run, TH, Context()))
    assert f.confidence == pytest.approx(confidence(mean(1.0, 0.0, 0.0), TH.confidence_floor))


def test_poor_init_with_a_collapsed_last_layer_does_not_divide_by_zero() -> None:
    run = mis_init(30, 0.005, 0.0064)
    run.layer_stats["var"][:, -1] = 0.0          # the signal is gone by the head: depth ratio 0
    f = _one(poor_init(run, TH, Context()))
    assert f.evidence["early_activation_depth_ratio"] == 0.0 and TH.confidence_floor < f.confidence <= 1.0
