"""Issue 11: false alarms on legitimate recipes and misses, each with a broken case and a healthy look-alike.

Hand-built runs (tests/rulecases.py): no torch, no training; every assertion is about a verdict or a number
the rules compute from the values set here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import overfitting, underfitting, unnormalized_input
from gradscope.judge.rules._common import Context, is_classifier, loss_scaling
from gradscope.judge.rules.data import first_layer_input_rms
from gradscope.judge.rules.fitting import chance_loss
from gradscope.judge.thresholds import Thresholds
from gradscope.store.schema import InputStats
from tests.rulecases import healthy_run, mlp, set_layer, set_metric, set_param

TH = Thresholds()


def _warned(diag, code: Code) -> bool:
    return any(f.code is code and f.severity is not Severity.INFO for f in diag.findings)


# ------------------------------------------------------------------ 1a: input normalized inside forward()

def _raw_input(run, std: float = 80.0, mean: float = 120.0) -> None:
    run.inputs = [(s, InputStats(mean=mean, std=std, min=0.0, max=255.0, count=640)) for s, _ in run.inputs]


def test_input_standardized_inside_forward_is_an_info_without_fixes() -> None:
    run = healthy_run()
    _raw_input(run)
    est = first_layer_input_rms(run)
    assert est is not None and est[0] == "fc1" and est[2] < TH.input_inside_rms   # unit-variance output of fc1
    res = unnormalized_input(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and len(res) == 1
    assert res[0].severity is Severity.INFO and "inside forward()" in res[0].message
    d = diagnose(run)
    assert not _warned(d, Code.UNNORMALIZED_INPUT)
    assert all(not f.fixes for f in d.by_code(Code.UNNORMALIZED_INPUT))


def test_raw_input_reaching_the_first_layer_still_warns_and_says_what_it_receives() -> None:
    run = healthy_run()
    _raw_input(run)
    set_layer(run, "var", "fc1", 1e4)      # fc1's output carries the raw scale: what it receives is raw
    est = first_layer_input_rms(run)
    assert est is not None and est[2] > 30 * TH.input_inside_rms
    res = unnormalized_input(run, TH, Context())
    assert not isinstance(res, NotEvaluated)
    assert res[0].severity is Severity.WARNING and "estimated RMS" in res[0].message
    assert {fx.kind for fx in diagnose(run).by_code(Code.UNNORMALIZED_INPUT)[0].fixes} >= {FixKind.NORMALIZATION}


def test_feature_spread_alone_is_not_excused_by_the_estimate() -> None:
    # Root RMS ≈ 1 but features span 1e4×: only the root input can show that; the rule keeps warning.
    run = healthy_run()
    run.inputs = [(s, InputStats(mean=0.0, std=1.0, min=-3, max=3, count=640, feature_std_min=1e-4,
                                 feature_std_max=1.0)) for s, _ in run.inputs]
    res = unnormalized_input(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and res[0].severity is Severity.WARNING


# ------------------------------------------------------------------ 1b: loss-scaled gradients, no scaler=

def _scaled(run, scale: float = 2.0 ** 16):
    run.clip_norm = run.grad_norm.copy()
    run.grad_norm = run.grad_norm * scale
    run.all_grad_norm = run.all_grad_norm * scale
    run.param_stats["grad_norm"] = run.param_stats["grad_norm"] * scale
    return run


def test_loss_scaled_gradients_are_recognized_and_not_called_exploding() -> None:
    run = _scaled(healthy_run(optimizer="SGD"))
    ls = loss_scaling(run, TH)
    assert ls is not None and ls.known and np.nanmedian(ls.scale) == 2.0 ** 16
    d = diagnose(run)
    assert not _warned(d, Code.EXPLODING_GRADIENTS)
    notes = d.by_code(Code.EXPLODING_GRADIENTS)
    assert notes and notes[0].severity is Severity.INFO and "scaler=" in notes[0].message and not notes[0].fixes


def test_same_gradients_without_the_power_of_two_signature_are_exploding() -> None:
    run = _scaled(healthy_run(optimizer="SGD"))
    run.clip_norm = run.clip_norm * 1.37            # a user's clipping: an arbitrary ratio, not 2^k
    assert loss_scaling(run, TH) is None
    assert _warned(diagnose(run), Code.EXPLODING_GRADIENTS)


def test_skipped_overflow_steps_without_scaler_are_not_divergence() -> None:
    run = _scaled(healthy_run(optimizer="SGD"))
    run.clip_norm = np.full(run.steps.shape, np.nan)   # watched without optimizer=: no step-time norm
    bad = np.zeros(run.steps.shape, dtype=bool)
    bad[[0, 1, 7]] = True
    run.param_stats["grad_nonfinite"][bad, 0] = 3
    ls = loss_scaling(run, TH)
    assert ls is not None and not ls.known and "skipped" in ls.how
    d = diagnose(run)
    assert not _warned(d, Code.EXPLODING_GRADIENTS) and not _warned(d, Code.DIVERGENCE)
    # The look-alike: the weights turn NaN after the first non-finite gradient (nothing skipped it).
    set_param(run, "norm", "fc1.weight", np.where(np.arange(run.steps.size) >= 1, np.nan, 1.0))
    assert loss_scaling(run, TH) is None
    assert _warned(diagnose(run), Code.EXPLODING_GRADIENTS)


# ------------------------------------------------------------------ 1c: the head in the depth test

def test_depth_growth_ignores_a_regression_head_on_a_raw_scale_target() -> None:
    run = healthy_run(mlp((20, 64, 64, 1)), loss_start=5e4, loss_end=3e3)
    set_layer(run, "var", "fc3", 250.0 ** 2)     # the head's output grows to the target's scale
    d = diagnose(run)
    assert not _warned(d, Code.EXPLODING_GRADIENTS)


def test_depth_growth_through_the_hidden_stack_still_fires() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 1)), loss_start=5e4, loss_end=3e3)
    set_layer(run, "var", "fc3", 250.0 ** 2)     # a hidden layer: the signal itself blows up
    f = diagnose(run).by_code(Code.EXPLODING_GRADIENTS)
    assert f and f[0].severity is not Severity.INFO and "activation std grows" in f[0].message


def test_gradient_to_weight_test_stands_down_for_a_raw_scale_regression_target_only() -> None:
    def run_with(accuracy: bool):
        run = healthy_run(mlp((20, 64, 64, 1)), loss_start=5e4, loss_end=3e3, rel_grad=300.0, accuracy=accuracy)
        set_layer(run, "mean", "fc3", 2000.0)    # predictions in raw units
        return diagnose(run)
    reg = run_with(False)
    assert not _warned(reg, Code.EXPLODING_GRADIENTS)
    assert any("raw-scale target" in f.message for f in reg.by_code(Code.EXPLODING_GRADIENTS))
    clf = run_with(True)                          # accuracy logged: a classifier, no such excuse
    assert _warned(clf, Code.EXPLODING_GRADIENTS)


# ------------------------------------------------------------------ 1d: several outputs is not a classifier

def test_multi_output_regression_is_not_judged_against_log_c() -> None:
    run = healthy_run(mlp((20, 64, 4)), loss_start=26.0, loss_end=25.0)
    assert not is_classifier(run, TH) and chance_loss(run, TH) is None
    res = underfitting(run, TH, Context())
    assert isinstance(res, NotEvaluated) and "4 outputs" in res.reason


def test_flat_loss_at_log_c_is_still_underfitting_for_a_classifier() -> None:
    run = healthy_run(mlp((20, 64, 4)), loss_start=1.40, loss_end=1.33)
    assert is_classifier(run, TH) and chance_loss(run, TH) == pytest.approx(math.log(4))
    res = underfitting(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and res and res[0].severity is Severity.WARNING


# ------------------------------------------------------------------ 2a: only val_acc logged

def _val_acc_only(val_acc: float, val_factor: float = 1.05):
    run = healthy_run(loss_start=2.3, loss_end=1.4)
    vs = run.metrics["val_loss"].steps
    set_metric(run, "val_loss", vs, np.interp(vs, run.metrics["train_loss"].steps,
                                              run.metrics["train_loss"].values) * val_factor)
    set_metric(run, "val_acc", vs, np.linspace(0.1, val_acc, vs.size))
    return run


def test_underfitting_from_val_acc_when_train_and_val_loss_agree() -> None:
    res = underfitting(_val_acc_only(0.4), TH, Context())
    assert not isinstance(res, NotEvaluated) and res and res[0].severity is Severity.WARNING
    assert "validation error 60.0%" in res[0].message and "no training accuracy" in res[0].message


def test_good_val_acc_is_not_underfitting() -> None:
    res = underfitting(_val_acc_only(0.97), TH, Context())
    assert res == []


def test_val_acc_does_not_stand_for_train_when_the_losses_differ() -> None:
    res = underfitting(_val_acc_only(0.4, val_factor=1.6), TH, Context())
    # The validation error says nothing about the training error here; the loss path judges (it improved).
    assert res == [] or all("validation error" not in f.message for f in res)


# ------------------------------------------------------------------ 2d: validation never beat chance

def _memorizer(val_floor: float):
    run = healthy_run(loss_start=2.3, loss_end=0.01, accuracy=False)
    vs = run.metrics["val_loss"].steps
    set_metric(run, "val_loss", vs, val_floor * (1 + np.sqrt(np.linspace(0, 1, vs.size))))
    return run


def test_memorizing_with_validation_at_chance_points_at_labels_not_early_stopping() -> None:
    run = _memorizer(val_floor=2.314)
    res = overfitting(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and res[0].severity is Severity.WARNING
    assert "never went below the chance-level loss" in res[0].message
    fixes = diagnose(run).by_code(Code.OVERFITTING)[0].fixes
    assert fixes[0].kind is FixKind.DATA and "labels" in fixes[0].summary
    assert all(fx.kind is not FixKind.EARLY_STOPPING for fx in fixes)


def test_ordinary_overfitting_keeps_the_early_stopping_point() -> None:
    run = _memorizer(val_floor=0.6)
    res = overfitting(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and "chance" not in res[0].message
    fixes = diagnose(run).by_code(Code.OVERFITTING)[0].fixes
    assert fixes[0].kind is FixKind.EARLY_STOPPING and "Stop at step" in fixes[0].summary


# ------------------------------------------------------------------ 2c: an explosion inside the early window

def _early_blowup():
    run = healthy_run(n=60)
    g = run.all_grad_norm.copy()
    g[:3] = [0.8, 0.9, 1.0]                       # the healthy first steps
    g[3:] = 1.0 * 10.0 ** np.minimum(np.arange(3, g.size) - 2, 8)   # ×10 a step from step 3, capped at 1e8
    run.all_grad_norm = g
    run.grad_norm = g[run.steps]
    return run


def test_growth_is_measured_from_before_a_blowup_inside_the_early_window() -> None:
    from gradscope.judge.rules._common import early_reference
    run = _early_blowup()
    assert early_reference(run.all_grad_norm, TH) == pytest.approx(0.9, rel=0.2)
    # A window without a blow-up keeps its median (a steadily rising norm is judged as before).
    rising = np.linspace(0.5, 2.0, 60)
    assert early_reference(rising, TH) == pytest.approx(float(np.median(rising[:6])))
    f = [x for x in diagnose(run).by_code(Code.EXPLODING_GRADIENTS) if x.severity is not Severity.INFO]
    assert f and f[0].steps is not None and f[0].steps[0] <= 5
    clip = next(fx for fx in f[0].fixes if fx.kind is FixKind.CLIPPING)
    # Taken from the healthy first steps (≈ 1), not from the exploded ones (1e3…1e8).
    assert "max_norm=" in clip.code and float(clip.code.split("max_norm=")[1].rstrip(")")) < 10


def test_no_healthy_step_before_the_trouble_gives_no_made_up_clip_norm() -> None:
    from gradscope.judge.rules._fixes import suggest_max_norm
    run = _early_blowup()
    assert suggest_max_norm(run, TH, before_step=0) is None


def _classifier_loss(start: float, end: float, *, accuracy: bool):
    run = healthy_run(loss_start=start, loss_end=end, accuracy=accuracy)
    return run


def test_a_classifier_whose_loss_blew_up_at_once_is_judged_against_log_c() -> None:
    # 10 classes: log C = 2.3; the first logged loss (60) is already exploded and the run ends at 40.
    run = _classifier_loss(60.0, 40.0, accuracy=True)
    f = [x for x in diagnose(run).by_code(Code.DIVERGENCE) if x.severity is not Severity.INFO]
    assert f and "chance-level loss log(C)" in f[0].message


def test_a_regression_loss_that_fell_is_not_divergence() -> None:
    run = _classifier_loss(60.0, 40.0, accuracy=False)   # no accuracy, start far from log C: a regression
    assert not is_classifier(run, TH)
    assert not diagnose(run).by_code(Code.DIVERGENCE)


# ------------------------------------------------------------------ 2b: a learning rate 100× too low

def _creeping(loss_end: float, *, ratio_scale: float = 1.0, points: int = 12):
    """SGD, update/weight ratio ≈ 3e-4 × ratio_scale (inside the absolute band), per-epoch losses from 2.35."""
    run = healthy_run(optimizer="SGD", lr=0.001)
    run.param_stats["update_ratio"] = run.param_stats["update_ratio"] * 30 * ratio_scale   # lr·rel_grad = 1e-5 → 3e-4
    st = run.steps[:: max(1, run.steps.size // points)]
    set_metric(run, "train_loss", st, np.linspace(2.35, loss_end, st.size) * (1 + 0.003 * np.sin(np.arange(st.size))))
    set_metric(run, "val_loss", st, np.linspace(2.36, loss_end + 0.01, st.size))
    return run


def test_slow_steady_progress_with_small_steps_is_a_learning_rate_too_low() -> None:
    from gradscope.judge.rules import learning_rate
    run = _creeping(2.17)
    res = learning_rate(run, TH, Context())
    assert not isinstance(res, NotEvaluated) and res and res[0].title == "Learning rate too low"
    assert "Theil–Sen" in res[0].message and "Mann–Kendall" in res[0].message
    fx = diagnose(run).by_code(Code.LEARNING_RATE)[0].fixes[0]
    assert fx.kind is FixKind.LEARNING_RATE and "(was 0.001)" in fx.summary


@pytest.mark.parametrize(("loss_end", "ratio_scale", "why"), [
    (0.5, 1.0, "real progress"),
    (2.17, 3.0, "steps of the usual size (a loss creeping at its noise floor)"),
    (2.35, 1.0, "no trend: a plateau"),
])
def test_look_alikes_are_not_a_learning_rate_problem(loss_end: float, ratio_scale: float, why: str) -> None:
    from gradscope.judge.rules import learning_rate
    res = learning_rate(_creeping(loss_end, ratio_scale=ratio_scale), TH, Context())
    assert res == [], why


def test_too_few_losses_for_a_trend_say_nothing() -> None:
    from gradscope.judge.rules import learning_rate
    assert learning_rate(_creeping(2.17, points=4), TH, Context()) == []


# ------------------------------------------------------------------ 3: fixes read the run

def test_weight_decay_already_set_is_raised_from_its_value_not_added() -> None:
    from gradscope.judge.rules.fitting import overfitting as _rule
    from gradscope.judge.rules.fitting import overfitting_fixes
    run = _memorizer(val_floor=0.6)
    run.header.optimizer["weight_decay"] = 0.1
    f = _rule(run, TH, Context())[0]
    wd = [fx for fx in overfitting_fixes(f, run, TH) if fx is not None and "weight decay" in fx.summary]
    assert wd and wd[0].summary.startswith("Raise weight decay from 0.1 to 1")
    run.header.optimizer["weight_decay"] = 0.0
    wd = [fx for fx in overfitting_fixes(f, run, TH) if fx is not None and "weight decay" in fx.summary]
    assert wd[0].summary.startswith("Add weight decay")


def test_clipping_advice_reads_the_users_own_clip() -> None:
    from gradscope.judge.rules._fixes import clip_fix
    run = _early_blowup()
    run.clip_norm = np.minimum(run.grad_norm, 0.5)       # the user clips at 0.5: it binds on every step
    fx = clip_fix(run, TH, before_step=40)
    assert "already clipped at 0.5" in fx.summary
    run.clip_norm = np.minimum(run.grad_norm, 1e6)        # clipping at 1e6 binds on the exploded steps
    fx = clip_fix(run, TH, before_step=40)
    assert fx.summary.startswith("Lower the gradient clipping norm from") and "# was" in fx.code


def test_lowering_the_learning_rate_never_claims_to_raise_the_ratio() -> None:
    from gradscope.judge.findings import Finding
    from gradscope.judge.rules.optim import LearningRateDetail, learning_rate_fixes
    run = healthy_run()
    f = Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", "", detail=LearningRateDetail(
        direction="high", ratio=0.0023, target=0.01, factor=0.04, suggested_lr=4e-5))
    summary = learning_rate_fixes(f, run, TH)[0].summary
    assert "from 0.0023 to about 9.2e-05" in summary
    g = Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", "", evidence={"weight_growth": 25.0},
                detail=LearningRateDetail(direction="high", ratio=0.0023, target=0.01, factor=0.04))
    assert "grew 25×" in learning_rate_fixes(g, run, TH)[0].summary


def test_no_normalization_after_a_norm_layer_and_no_he_init_on_its_gain() -> None:
    from gradscope.judge.rules._fixes import init_fix, norm_fix
    from tests.rulecases import L
    layers = [L("0", 20, 64), L("1", 64, 64, None, type="BatchNorm1d"), L("3", 64, 64), L("4", 64, 10, None)]
    run = healthy_run(layers)
    nf = norm_fix(run, ["1", "0", "3"], "why", TH)
    assert nf is not None and "model[1]" not in nf.summary and "model[0]" not in nf.summary   # 0 feeds a BN
    assert "model[3]" in nf.summary
    init = init_fix(run, ["1", "3"], "why", TH)
    assert init is not None and "model[1]" not in init.code and "model[1]" not in init.summary


def test_widths_are_units_not_fans() -> None:
    from gradscope.judge.findings import Finding
    from gradscope.judge.rules.fitting import underfitting_fixes
    from tests.rulecases import L
    run = healthy_run([L("conv1", 9, 144, type="Conv2d", units=16), L("fc", 256, 10, None)])
    f = Finding(Code.UNDERFITTING, Severity.WARNING, "Underfitting", "")
    cap = next(fx for fx in underfitting_fixes(f, run, TH) if fx is not None and fx.kind is FixKind.CAPACITY)
    assert "(16 → 32 units)" in cap.summary
