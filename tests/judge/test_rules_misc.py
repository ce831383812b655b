"""unnormalized_input, learning_rate and unstable_loss on hand-written traces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import learning_rate, unnormalized_input, unstable_loss
from gradscope.judge.rules._common import Context
from gradscope.judge.rules.loss import find_spikes
from gradscope.judge.thresholds import Thresholds
from gradscope.store.schema import InputStats
from tests.rulecases import L, healthy_run, metrics_only_run, mlp, set_metric

TH = Thresholds()


def _found(run: object, code: Code, **kw: object) -> list:
    return [f for f in diagnose(run, **kw).findings if f.code is code]  # type: ignore[arg-type]


def _with_inputs(run: object, **kw: float) -> object:
    base = dict(mean=0.0, std=1.0, min=-3.0, max=3.0, count=640, feature_std_min=0.8, feature_std_max=1.2,
                feature_mean_absmax=0.2)
    base.update(kw)
    run.inputs = [(int(s), InputStats(**base)) for s in run.steps[::4]]  # type: ignore[attr-defined]
    # The first layer receives that input as it is (no normalization inside forward()): its output's second
    # moment scales with the input's, E[z²] ∝ E[x²] (issue 11: the rule cross-checks the two).
    ms = base["std"] ** 2 + base["mean"] ** 2
    if ms > 1.0:
        run.layer_stats["var"][:, 0] *= ms  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------- unnormalized input

@pytest.mark.parametrize(("stats", "needle"), [
    (dict(mean=120.0, std=70.0, min=0.0, max=255.0, feature_std_max=80.0, feature_mean_absmax=130.0), "std 70"),
    (dict(mean=50.0, std=2.0, feature_mean_absmax=50.0), "stds from 0"),
    (dict(mean=80.0, std=300.0, feature_std_min=0.003, feature_std_max=570.0, feature_mean_absmax=650.0),
     "feature stds span"),
    (dict(mean=0.0, std=1.0, feature_std_min=0.001, feature_std_max=3.0), "feature stds span"),
])
def test_unnormalized_input_fires(stats: dict, needle: str) -> None:
    run = _with_inputs(healthy_run(n=40), **stats)
    f = _found(run, Code.UNNORMALIZED_INPUT)[0]
    assert f.severity is Severity.WARNING and needle in f.message
    assert f.layers == ("fc1",)
    assert f.fixes[0].kind is FixKind.NORMALIZATION
    assert "X_train" in f.fixes[0].code


@pytest.mark.parametrize("stats", [
    dict(mean=0.45, std=0.25, min=0.0, max=1.0, feature_std_min=0.2, feature_std_max=0.3),   # images in [0, 1]
    dict(mean=0.13, std=0.31, min=0.0, max=1.0, feature_std_min=0.0, feature_std_max=0.45),  # MNIST, 0-std border
    dict(mean=-0.4, std=1.1, min=-2.5, max=2.7),                                             # standardized
    dict(mean=0.1, std=0.3, min=0.0, max=1.0, feature_std_min=0.0, feature_std_max=0.5),     # one-hot
])
def test_reasonably_scaled_inputs_do_not_fire(stats: dict) -> None:
    run = _with_inputs(healthy_run(n=40), **stats)
    assert unnormalized_input(run, TH, Context()) == []


def test_image_inputs_get_normalize_snippet() -> None:
    layers = [L("conv1", 27, 144, type="Conv2d", units=16), L("fc", 256, 10, None)]
    run = _with_inputs(healthy_run(layers, n=40), mean=120.0, std=70.0, feature_std_max=75.0)
    f = _found(run, Code.UNNORMALIZED_INPUT)[0]
    assert "transforms.Normalize" in f.fixes[0].code


def test_token_inputs_to_an_embedding_are_not_evaluated() -> None:
    layers = [L("embed", 5000, 64, None, type="Embedding"), L("fc1", 64, 64), L("head", 64, 5000, None)]
    run = _with_inputs(healthy_run(layers, n=20), mean=2400.0, std=1400.0, min=0.0, max=4999.0)
    r = unnormalized_input(run, TH, Context())
    assert isinstance(r, NotEvaluated) and "token ids" in r.reason
    assert not _found(run, Code.UNNORMALIZED_INPUT)


def test_input_normalized_by_the_model_is_not_evaluated() -> None:
    layers = [L("bn0", 20, 20, None, type="BatchNorm1d"), L("fc1", 20, 64), L("head", 64, 10, None)]
    run = _with_inputs(healthy_run(layers, n=20), mean=120.0, std=70.0)
    r = unnormalized_input(run, TH, Context())
    assert isinstance(r, NotEvaluated) and "normalizes" in r.reason


def test_no_input_stats_is_not_evaluated() -> None:
    r = unnormalized_input(healthy_run(n=20, inputs=False), TH, Context())
    assert isinstance(r, NotEvaluated)


# ---------------------------------------------------------------- learning rate

def _set_ratio(run: object, value: float | np.ndarray) -> None:
    run.param_stats["update_ratio"][:] = value  # type: ignore[attr-defined]


@pytest.mark.parametrize(("opt", "lr", "ratio", "direction", "suggested"), [
    ("SGD", 1e-6, 1e-8, "low", 1e-6 * 1e-3 / 1e-8),
    ("SGD", 1.0, 0.5, "high", 1.0 * 1e-3 / 0.5),
    ("Adam", 0.1, 0.9, "high", 0.1 * 1e-2 / 0.9),
    ("Adam", 1e-7, 2e-6, "low", 1e-7 * 1e-2 / 2e-6),
])
def test_learning_rate_out_of_band(opt: str, lr: float, ratio: float, direction: str, suggested: float) -> None:
    run = healthy_run(n=40, optimizer=opt, lr=lr)
    rng = np.random.default_rng(0)
    _set_ratio(run, ratio * np.exp(rng.normal(0, 0.2, size=run.param_stats["update_ratio"].shape)))
    f = _found(run, Code.LEARNING_RATE)[0]
    assert f.evidence["direction"] == direction
    assert f.evidence["suggested_lr"] == pytest.approx(suggested, rel=0.3)
    assert f"too {direction}" in f.message and opt in f.message
    fx = f.fixes[0]
    # set in place: the optimizer keeps its state and its other settings
    assert fx.kind is FixKind.LEARNING_RATE and 'for group in optimizer.param_groups:\n    group["lr"] = ' in fx.code
    new_lr = float(fx.code.split('group["lr"] = ')[1])
    assert new_lr == pytest.approx(suggested, rel=0.5)


def test_adam_ratio_that_would_be_high_for_sgd_is_fine() -> None:
    run = healthy_run(n=40, optimizer="Adam", lr=3e-3)
    _set_ratio(run, 0.2)
    assert learning_rate(run, TH, Context()) == []
    run.header = dataclasses.replace(run.header, optimizer={"class": "SGD", "lr": 3e-3})  # type: ignore[arg-type]
    assert learning_rate(run, TH, Context())


def test_steps_without_updates_are_left_out() -> None:
    run = healthy_run(n=40)
    run.param_stats["update_ratio"][::2] = 0.0      # gradient accumulation: no update on odd forwards
    assert learning_rate(run, TH, Context()) == []


def test_lr_unknown_gives_a_factor() -> None:
    run = healthy_run(n=40)
    run.lr = []
    run.header = dataclasses.replace(run.header, optimizer=None)  # type: ignore[arg-type]
    _set_ratio(run, 1e-8)
    f = _found(run, Code.LEARNING_RATE)[0]
    assert "Multiply the learning rate by" in f.fixes[0].summary


def test_learning_rate_not_evaluated_without_ratios() -> None:
    run = healthy_run(n=40)
    _set_ratio(run, np.nan)
    assert isinstance(learning_rate(run, TH, Context()), NotEvaluated)


# ---------------------------------------------------------------- unstable loss

def _loss_run(values: np.ndarray, seed: int = 0) -> object:
    run = healthy_run(n=values.size, seed=seed)
    set_metric(run, "train_loss", run.steps, values)
    return run


def _decaying(n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (0.2 + 2.0 * np.exp(-4 * t / n)) * np.exp(rng.normal(0, sigma, n))


@pytest.mark.parametrize(("n", "spikes", "severity"), [(200, [50, 120, 170], Severity.WARNING),
                                                       (80, [30, 60], Severity.WARNING),
                                                       (100, [70], Severity.INFO)])
def test_loss_spikes(n: int, spikes: list[int], severity: Severity) -> None:
    v = _decaying(n, 0.05, n)
    v[spikes] *= 8
    f = _found(_loss_run(v), Code.UNSTABLE_LOSS)[0]
    assert f.severity is severity
    assert f.evidence["loss_spike_steps"] == spikes
    assert f"first at step {spikes[0]}" in f.message


def test_oscillating_loss() -> None:
    rng = np.random.default_rng(3)
    v = np.where(np.arange(120) % 2 == 0, 1.0, 4.0) * np.exp(rng.normal(0, 0.1, 120))
    f = _found(_loss_run(v), Code.UNSTABLE_LOSS)[0]
    assert f.severity is Severity.WARNING and "oscillates" in f.message
    kinds = [fx.kind for fx in f.fixes]
    assert kinds == [FixKind.LEARNING_RATE, FixKind.CLIPPING]


@pytest.mark.parametrize(("sigma", "seed"), [(0.05, 0), (0.2, 1), (0.35, 2), (0.35, 3)])
def test_noisy_but_healthy_loss_is_stable(sigma: float, seed: int) -> None:
    assert unstable_loss(_loss_run(_decaying(300, sigma, seed), seed), TH, Context()) == []


def test_gradient_norm_spikes_alone_are_info() -> None:
    run = healthy_run(n=100)
    run.all_grad_norm[[30, 60, 80]] *= 20
    f = _found(run, Code.UNSTABLE_LOSS)[0]
    assert f.severity is Severity.INFO and "gradient-norm spikes" in f.message


def test_unstable_loss_from_tensorboard_scalars_only() -> None:
    v = _decaying(100, 0.05, 1)
    v[[40, 70]] *= 10
    run = metrics_only_run({"train_loss": (np.arange(100), v)})
    r = unstable_loss(run, TH, Context())
    assert isinstance(r, list) and r and r[0].severity is Severity.WARNING


def test_unstable_loss_not_evaluated_without_loss_or_norms() -> None:
    r = unstable_loss(metrics_only_run({"val_loss": ([0, 1], [1.0, 0.9])}), TH, Context())
    assert isinstance(r, NotEvaluated) and "train_loss" in r.reason


def test_find_spikes_ignores_non_positive_series() -> None:
    assert find_spikes(np.array([1.0, -1.0, 5.0, 1.0, 1.0, 1.0]), TH).size == 0
    assert find_spikes(np.array([1.0, 1.0, 1.0, 1.0, 1.0, 9.0]), TH).tolist() == [5]


def test_spike_thresholds_override() -> None:
    v = _decaying(100, 0.05, 5)
    v[[30, 60]] *= 2.5                    # below 1 + spike_rtol = 3×
    assert not _found(_loss_run(v), Code.UNSTABLE_LOSS)
    assert _found(_loss_run(v), Code.UNSTABLE_LOSS, thresholds=Thresholds(spike_rtol=1.0))


def test_mlp_shapes_irrelevant_for_loss_rules() -> None:
    run = healthy_run(mlp((4, 8, 2)), n=50)
    assert unstable_loss(run, TH, Context()) == []


def test_learning_rate_too_high_from_weight_growth() -> None:
    """Adam at a huge lr: the weights blow up, after which the ratio looks small."""
    run = healthy_run(n=60, optimizer="Adam", lr=0.5)
    run.param_stats["norm"] *= np.geomspace(1, 15, 60)[:, None]
    _set_ratio(run, 3e-3)
    f = _found(run, Code.LEARNING_RATE)[0]
    assert f.evidence["direction"] == "high" and f.evidence["weight_growth"] == pytest.approx(15, rel=0.2)
    assert "weights grew" in f.message
    # 15× growth does not mean steps 15× too large: growth compounds once updates overshoot, so the fix lowers
    # the rate one decade (fix_lr_backoff) and says to re-check.
    assert f.evidence["suggested_lr"] == pytest.approx(0.5 * TH.fix_lr_backoff)


def test_moderate_weight_growth_is_healthy() -> None:
    run = healthy_run(n=60, optimizer="SGD", lr=0.05)
    run.param_stats["norm"] *= np.linspace(1, 4, 60)[:, None]
    assert learning_rate(run, TH, Context()) == []


def test_losses_of_exactly_zero_do_not_hide_instability() -> None:
    rng = np.random.default_rng(4)
    v = np.geomspace(0.5, 80, 120) * np.exp(rng.normal(0, 1.0, 120))
    v[[20, 60, 100]] = 0.0
    f = _found(_loss_run(v), Code.UNSTABLE_LOSS)
    assert f and f[0].severity is Severity.WARNING


@pytest.mark.parametrize("seed", range(3))
def test_loss_that_loses_its_progress_is_unstable(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    smooth = np.concatenate([np.geomspace(2.3, 0.4, 50), np.geomspace(0.4, 1.6, 50), np.full(50, 1.2)])
    f = _found(_loss_run(smooth * np.exp(rng.normal(0, 0.4, n))), Code.UNSTABLE_LOSS)
    assert f and f[0].severity is Severity.WARNING and "climbed back" in f[0].message


def test_plateau_after_fast_drop_is_not_a_rebound() -> None:
    rng = np.random.default_rng(9)
    smooth = np.concatenate([np.geomspace(2.3, 0.05, 30), np.full(120, 0.05)])
    assert unstable_loss(_loss_run(smooth * np.exp(rng.normal(0, 0.5, 150))), TH, Context()) == []
