"""overfitting / underfitting: the bias/variance table, loss curves, and what is not evaluated."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import Verdict, bias_variance, overfitting, underfitting
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import healthy_run, metrics_only_run, mlp, set_metric

TH = Thresholds()

# The standard worked example, baseline (human-level) error 0.5 %.
TABLE = [
    (0.01, 0.11, Verdict.HIGH_VARIANCE),
    (0.15, 0.16, Verdict.HIGH_BIAS),
    (0.15, 0.30, Verdict.BOTH),
    (0.005, 0.01, Verdict.NEITHER),
]


@pytest.mark.parametrize(("train", "val", "verdict"), TABLE)
def test_bias_variance_table(train: float, val: float, verdict: Verdict) -> None:
    bv = bias_variance(train, val, 0.005)
    assert bv.verdict is verdict
    assert bv.avoidable_bias == pytest.approx(train - 0.005)
    assert bv.variance == pytest.approx(val - train)


@pytest.mark.parametrize(("train", "val", "verdict"), TABLE)
@pytest.mark.parametrize("as_accuracy", [False, True])
def test_bias_variance_table_through_diagnose(train: float, val: float, verdict: Verdict,
                                              as_accuracy: bool) -> None:
    steps = np.arange(5) * 100
    tr, va = np.linspace(0.5, train, 5), np.linspace(0.5, val, 5)
    if as_accuracy:
        run = metrics_only_run({"train_acc": (steps, 1 - tr), "val_acc": (steps, 1 - va)})
    else:
        run = metrics_only_run({"train_error": (steps, tr), "val_error": (steps, va)})
    d = diagnose(run, baseline_error=0.005)
    codes = {f.code for f in d.findings}
    assert (Code.OVERFITTING in codes) == (verdict in (Verdict.HIGH_VARIANCE, Verdict.BOTH))
    assert (Code.UNDERFITTING in codes) == (verdict in (Verdict.HIGH_BIAS, Verdict.BOTH))
    for f in d.findings:
        assert f.severity is Severity.WARNING
        assert f.evidence["verdict"] == verdict.value
        assert verdict.value in f.message
    if verdict is Verdict.HIGH_VARIANCE:
        f = d.by_code(Code.OVERFITTING)[0]
        assert "validation error 11.0% vs train 1.0%" in f.message
        assert {FixKind.REGULARIZATION, FixKind.DATA, FixKind.EARLY_STOPPING} <= {fx.kind for fx in f.fixes}
    if verdict is Verdict.HIGH_BIAS:
        f = d.by_code(Code.UNDERFITTING)[0]
        assert "avoidable bias 14.5 points" in f.message
        assert {FixKind.CAPACITY, FixKind.TRAIN_LONGER} <= {fx.kind for fx in f.fixes}


def test_accuracy_in_percent() -> None:
    run = metrics_only_run({"train_acc": ([0, 1, 2], [50, 90, 99]), "val_acc": ([0, 1, 2], [50, 80, 85])})
    f = diagnose(run).by_code(Code.OVERFITTING)[0]
    assert f.evidence["train_error"] == pytest.approx(0.01) and f.evidence["val_error"] == pytest.approx(0.15)


@pytest.mark.parametrize(("train_err", "severity"), [(0.1, Severity.INFO), (0.35, Severity.WARNING)])
def test_high_bias_without_baseline_is_cautious(train_err: float, severity: Severity) -> None:
    run = metrics_only_run({"train_error": ([0, 1, 2], [0.6, 0.4, train_err]),
                            "val_error": ([0, 1, 2], [0.6, 0.4, train_err + 0.01])})
    f = diagnose(run).by_code(Code.UNDERFITTING)[0]
    assert f.severity is severity and "no baseline given" in f.message


@pytest.mark.parametrize(("classes", "train_err", "severity"), [
    (10, 0.3, Severity.INFO), (10, 0.5, Severity.WARNING), (2, 0.2, Severity.INFO), (2, 0.3, Severity.WARNING),
    (4, 0.21, Severity.INFO)])
def test_high_bias_without_baseline_is_judged_against_chance(classes: int, train_err: float,
                                                            severity: Severity) -> None:
    run = healthy_run(mlp((20, 64, classes)), n=30)
    set_metric(run, "train_error", [0, 10, 29], [1 - 1 / classes, 0.5 * (1 - 1 / classes + train_err), train_err])
    set_metric(run, "val_error", [0, 10, 29], [1 - 1 / classes, 0.5, train_err])
    f = diagnose(run).by_code(Code.UNDERFITTING)[0]
    assert f.severity is severity


def test_gap_near_chance_is_noise_not_variance() -> None:
    bv = bias_variance(0.586, 0.644)
    assert bv.verdict is Verdict.HIGH_BIAS


def test_thresholds_override_variance() -> None:
    run = metrics_only_run({"train_error": ([0, 1], [0.1, 0.02]), "val_error": ([0, 1], [0.1, 0.06])})
    assert not diagnose(run).by_code(Code.OVERFITTING)
    assert diagnose(run, Thresholds(variance=0.03)).by_code(Code.OVERFITTING)


# ---------------------------------------------------------------- loss curves

def _overfit_curves(n_evals: int, best: int, rise: float, seed: int = 0, per_step: bool = True) -> object:
    rng = np.random.default_rng(seed)
    run = healthy_run(n=n_evals * 10, seed=seed)
    steps = run.steps
    t = steps / steps[-1]
    train = (0.05 + 2.0 * np.exp(-5 * t)) * (np.exp(rng.normal(0, 0.05, steps.size)) if per_step else 1)
    set_metric(run, "train_loss", steps, train)
    vsteps = steps[9::10]
    v = np.empty(n_evals)
    v[: best + 1] = np.linspace(2.0, 0.5, best + 1)
    v[best + 1:] = 0.5 * (1 + np.linspace(rise / (n_evals - best), rise, n_evals - best - 1))
    set_metric(run, "val_loss", vsteps, v)
    return run


@pytest.mark.parametrize(("n_evals", "best", "rise"), [(10, 3, 0.4), (20, 12, 0.3), (6, 2, 0.25), (30, 5, 1.0)])
def test_overfitting_from_loss_curves_names_best_evaluation(n_evals: int, best: int, rise: float) -> None:
    run = _overfit_curves(n_evals, best, rise, seed=n_evals)
    f = diagnose(run).by_code(Code.OVERFITTING)[0]
    best_step = int(run.metrics["val_loss"].steps[best])
    assert f.severity is Severity.WARNING
    assert f.evidence["best_step"] == best_step and f.evidence["best_eval"] == best + 1
    assert f"lowest at step {best_step} (evaluation {best + 1} of {n_evals}" in f.message
    es = next(fx for fx in f.fixes if fx.kind is FixKind.EARLY_STOPPING)
    assert f"Stop at step {best_step}" in es.summary and "torch.save" in es.code


def test_val_loss_noise_without_a_rise_is_not_overfitting() -> None:
    for seed in range(4):
        run = healthy_run(n=100, seed=seed)
        assert overfitting(run, TH, Context()) == []


def test_val_and_train_both_rising_is_not_overfitting() -> None:
    run = _overfit_curves(10, 3, 0.5)
    tl = run.metrics["train_loss"]  # type: ignore[attr-defined]
    set_metric(run, "train_loss", tl.steps, np.linspace(0.5, 3.0, tl.values.size))
    assert overfitting(run, TH, Context()) == []


def test_single_late_bump_needs_patience() -> None:
    run = _overfit_curves(10, 8, 0.5)          # only one evaluation after the best
    assert overfitting(run, TH, Context()) == []


def test_rising_val_loss_with_accuracy_fine_is_info() -> None:
    run = _overfit_curves(10, 3, 0.4)
    set_metric(run, "train_acc", [0, 50, 99], [0.1, 0.9, 0.97])
    set_metric(run, "val_acc", [9, 49, 99], [0.1, 0.9, 0.95])
    f = overfitting(run, TH, Context())
    assert isinstance(f, list) and f[0].severity is Severity.INFO


def test_no_validation_is_not_evaluated() -> None:
    run = healthy_run(n=40, val=False)
    r = overfitting(run, TH, Context())
    assert isinstance(r, NotEvaluated) and r.reason == "no validation loss or accuracy logged"
    d = diagnose(run)
    assert Code.OVERFITTING in {n.code for n in d.not_evaluated}


@pytest.mark.parametrize(("classes", "level"), [(10, 2.25), (100, 4.5), (2, 0.69)])
def test_underfitting_flat_loss_near_chance(classes: int, level: float) -> None:
    rng = np.random.default_rng(classes)
    run = healthy_run(mlp((20, 64, 64, classes)), n=60)
    steps = run.steps
    set_metric(run, "train_loss", steps, level * np.exp(rng.normal(0, 0.02, steps.size)))
    set_metric(run, "val_loss", steps[::6], level * 1.02 * np.ones(10))
    f = diagnose(run).by_code(Code.UNDERFITTING)[0]
    assert f.severity is Severity.WARNING and "chance-level" in f.message


def test_flat_but_low_loss_is_converged_not_underfitting() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=60)
    set_metric(run, "train_loss", run.steps, np.full(60, 0.05))
    set_metric(run, "val_loss", run.steps[::6], np.full(10, 0.052))
    assert underfitting(run, TH, Context()) == []


def test_flat_loss_without_a_scale_is_not_evaluated() -> None:
    run = healthy_run(mlp((20, 64, 64, 1)), n=60)          # regression head: no chance level
    set_metric(run, "train_loss", run.steps, np.full(60, 3.0))
    set_metric(run, "val_loss", run.steps[::6], np.full(10, 3.1))
    r = underfitting(run, TH, Context())
    assert isinstance(r, NotEvaluated) and "baseline" in r.reason


def test_flat_train_far_from_val_is_not_underfitting() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=60)
    set_metric(run, "train_loss", run.steps, np.full(60, 2.2))
    set_metric(run, "val_loss", run.steps[::6], np.full(10, 4.0))
    assert underfitting(run, TH, Context()) == []


def test_underfitting_not_evaluated_without_train_metrics() -> None:
    r = underfitting(metrics_only_run({"val_loss": ([0, 1, 2], [1.0, 0.9, 0.8])}), TH, Context())
    assert isinstance(r, NotEvaluated) and "no training loss or accuracy" in r.reason


def test_healthy_fit_metrics_are_quiet() -> None:
    for seed in range(3):
        run = healthy_run(n=80, seed=seed, accuracy=True)
        assert overfitting(run, TH, Context()) == [] and underfitting(run, TH, Context()) == []
