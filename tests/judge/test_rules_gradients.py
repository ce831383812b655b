"""vanishing_gradients, exploding_gradients and divergence on hand-written traces."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import RULES, divergence, exploding_gradients, vanishing_gradients
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import add_nonfinite, healthy_run, metrics_only_run, mlp, recompute_total, set_metric

TH = Thresholds()


def _codes(run: object, **kw: object) -> dict[Code, list]:
    out: dict[Code, list] = {}
    for f in diagnose(run, **kw).findings:  # type: ignore[arg-type]
        out.setdefault(f.code, []).append(f)
    return out


def _decay_gradients(run: object, per_layer: float, frac_steps: float = 1.0) -> None:
    """Scale each layer's weight gradient by per_layer^(distance from the head), on a fraction of steps."""
    names = [la.name for la in run.layers]  # type: ignore[attr-defined]
    n = run.steps.size  # type: ignore[attr-defined]
    rows = slice(0, round(n * frac_steps))
    pnames = [p.name for p in run.params]  # type: ignore[attr-defined]
    for k, name in enumerate(names):
        dist = len(names) - 1 - k
        for suffix in (".weight", ".bias"):
            if name + suffix in pnames:
                j = pnames.index(name + suffix)
                run.param_stats["grad_norm"][rows, j] *= per_layer ** dist  # type: ignore[attr-defined]
                run.layer_stats["grad_norm"][rows, k] *= per_layer ** dist  # type: ignore[attr-defined]
    recompute_total(run)  # type: ignore[arg-type]


# ---------------------------------------------------------------- vanishing

@pytest.mark.parametrize(("widths", "act", "factor", "severity"), [
    ((20, 64, 64, 64, 10), "sigmoid", 0.05, Severity.WARNING),            # ratio 1.25e-4
    ((20,) + (32,) * 8 + (10,), "tanh", 0.25, Severity.ERROR),            # 0.25^8 ≈ 1.5e-5, below the floor
    ((20,) + (32,) * 10 + (10,), "sigmoid", 0.25, Severity.ERROR),        # 0.25^10 ≈ 9.5e-7
    ((784, 256, 256, 10), "relu", 0.01, Severity.WARNING),                # 1e-4
])
def test_vanishing_fires_on_depth_ratio(widths: tuple[int, ...], act: str, factor: float,
                                        severity: Severity) -> None:
    run = healthy_run(mlp(widths, act=act), n=80, seed=len(widths))
    _decay_gradients(run, factor)
    ratio = factor ** (len(widths) - 2)
    found = _codes(run).get(Code.VANISHING_GRADIENTS)
    assert found, ratio
    f = found[0]
    j = [p.name for p in run.params].index("fc1.weight")
    rms_first = run.param_stats["grad_norm"][:, j] / np.sqrt(run.params[j].numel)
    floor = float(np.mean(rms_first < TH.vanishing_floor)) >= TH.persistence
    expected = Severity.ERROR if ratio < TH.vanishing_ratio_error or floor else Severity.WARNING
    if floor:
        assert "absolute floor" in f.message
    assert f.severity is expected
    assert f.layers[0] == "fc1"
    assert f.evidence["median_depth_ratio"] == pytest.approx(ratio, rel=0.5)
    assert "fc1: gradient" in f.message and "threshold" in f.message
    kinds = {fx.kind for fx in f.fixes}
    assert {FixKind.INIT, FixKind.BATCHNORM, FixKind.RESIDUAL} <= kinds
    if act in ("sigmoid", "tanh"):
        assert FixKind.ACTIVATION in kinds
    init = next(fx for fx in f.fixes if fx.kind is FixKind.INIT)
    assert "model.fc1.weight" in init.code


def test_vanishing_absolute_floor() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=50)
    # ratio 0.05 (not below 1e-3) but the first layer's gradient elements are ~1e-9
    _decay_gradients(run, 0.2236)  # 0.05 over two layers
    j = [p.name for p in run.params].index("fc1.weight")
    run.param_stats["grad_norm"][:, j] = 1e-9 * np.sqrt(run.params[j].numel)
    f = _codes(run)[Code.VANISHING_GRADIENTS][0]
    assert "absolute floor" in f.message and f.severity is Severity.ERROR


def test_converged_model_with_uniformly_tiny_gradients_is_not_vanishing() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=50)
    run.param_stats["grad_norm"] *= 1e-9
    recompute_total(run)
    assert Code.VANISHING_GRADIENTS not in _codes(run)


def test_vanishing_needs_persistence() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 10), act="tanh"), n=60)
    _decay_gradients(run, 0.01, frac_steps=0.3)
    assert Code.VANISHING_GRADIENTS not in _codes(run)
    assert Code.VANISHING_GRADIENTS in _codes(run, thresholds=Thresholds(persistence=0.25))


def test_vanishing_falls_back_to_output_gradients_without_param_stats() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 10), act="sigmoid"), n=40)
    _decay_gradients(run, 0.02)
    run.param_stats = {}
    f = vanishing_gradients(run, TH, Context())
    assert isinstance(f, list) and f and "RMS output gradient" in f[0].message


def test_vanishing_not_evaluated_cases() -> None:
    one = healthy_run(mlp((20, 10)))
    r = vanishing_gradients(one, TH, Context())
    assert isinstance(r, NotEvaluated) and "two" in r.reason
    r = vanishing_gradients(metrics_only_run({}), TH, Context())
    assert isinstance(r, NotEvaluated) and "no gradscope log" in r.reason


# ---------------------------------------------------------------- exploding

def test_exploding_on_nonfinite_gradients_names_step_and_layer() -> None:
    run = healthy_run(n=50)
    run.all_grad_norm[35:40] *= 1e3            # the gradients grew into the overflow (issue 11)
    run.param_stats["grad_nonfinite"][40:, 0] = 1
    add_nonfinite(run, 40, "gradient", "fc3")
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert f.severity is Severity.ERROR and f.steps is not None and f.steps[0] == 40
    assert "fc3" in f.layers and "step 40" in f.message


def test_nonfinite_gradients_on_scaler_skipped_steps_are_not_exploding() -> None:
    run = healthy_run(n=50)
    run.skipped[[3, 10]] = True
    run.param_stats["grad_nonfinite"][[3, 10], :] = 1
    add_nonfinite(run, 3, "gradient", "fc1")
    run.all_grad_norm[[3, 10]] = np.inf
    codes = _codes(run)
    assert Code.EXPLODING_GRADIENTS not in codes and Code.DIVERGENCE not in codes


def test_exploding_depth_ratio() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 10)), n=50)
    _decay_gradients(run, 20.0)   # first layer 8000× the head
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert f.evidence["median_depth_ratio"] == pytest.approx(8000, rel=0.5)
    assert f.layers[0] == "fc1"


@pytest.mark.parametrize(("n", "rise"), [(60, 1e3), (200, 1e5), (30, 500.0)])
def test_exploding_when_every_layer_grows_alike(n: int, rise: float) -> None:
    """Depth ratio ≈ 1 but the total gradient norm grows far above its early values."""
    run = healthy_run(mlp((20, 64, 64, 10)), n=n, seed=n)
    grow = np.ones(n)
    half = n // 2
    grow[half:] = np.geomspace(1.0, rise, n - half)
    run.param_stats["grad_norm"] *= grow[:, None]
    recompute_total(run)
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert "total gradient norm rose" in f.message
    assert f.evidence["grad_norm_peak_growth"] == pytest.approx(rise, rel=0.6)
    clip = next(fx for fx in f.fixes if fx.kind is FixKind.CLIPPING)
    early = run.all_grad_norm[: run.all_steps.size // 10]
    assert "max_norm=" in clip.code
    m = float(clip.code.split("max_norm=")[1].split(")")[0])
    # within the run's normal range (10× the early median at most), far below the exploded values
    assert 0.5 * np.median(early) < m < 10 * np.median(early) * 1.5
    assert m < np.nanmax(run.all_grad_norm) / 10


def test_exploding_huge_from_the_start() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 10)), n=40)
    run.param_stats["grad_norm"] = run.param_stats["norm"] * 1e3
    recompute_total(run)
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert "total weight norm" in f.message


def test_exploding_activations_over_time() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=50)
    run.layer_stats["var"][25:, :] *= np.geomspace(1, 1e8, 25)[:, None]
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert "activation std" in f.message


def test_zero_initialized_layer_growing_to_normal_is_not_exploding() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=50)
    run.layer_stats["var"][:, 2] = np.concatenate([np.full(5, 1e-8), np.ones(45)])
    assert Code.EXPLODING_GRADIENTS not in _codes(run)


def test_moderate_gradient_growth_is_healthy() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=80)
    run.param_stats["grad_norm"] *= np.linspace(1, 8, 80)[:, None]
    recompute_total(run)
    assert _codes(run) == {}


# ---------------------------------------------------------------- divergence

def test_divergence_names_first_step_and_layer() -> None:
    run = healthy_run(n=50)
    add_nonfinite(run, 31, "loss")
    add_nonfinite(run, 30, "activation", "fc2")
    tl = run.metrics["train_loss"]
    vals = tl.values.copy()
    vals[31:] = np.nan
    set_metric(run, "train_loss", tl.steps, vals)
    f = _codes(run)[Code.DIVERGENCE][0]
    assert f.severity is Severity.ERROR and f.steps == (30, 31)
    assert f.layers == ("fc2",) and "step 30" in f.message and "fc2" in f.message
    kinds = [fx.kind for fx in f.fixes]
    # The gradients never grew before the NaN (issue 11): find where it came from, not a lower learning rate,
    # nor clipping (a NaN weight or input passes through clip_grad_norm_ as NaN).
    assert kinds == [FixKind.TRAINING_LOOP] and "step 30" in f.fixes[0].summary
    run.all_grad_norm[25:30] *= 1e3            # gradients that grew into the overflow: the learning rate
    kinds = [fx.kind for fx in _codes(run)[Code.DIVERGENCE][0].fixes]
    assert kinds[:2] == [FixKind.LEARNING_RATE, FixKind.CLIPPING]
    assert "group[\"lr\"] = 0.005" in _codes(run)[Code.DIVERGENCE][0].fixes[0].code   # lr 0.05 × 0.1, in place


def test_divergence_from_logged_loss_only() -> None:
    steps = np.arange(20)
    loss = np.linspace(2, 1, 20)
    loss[12:] = np.nan
    run = metrics_only_run({"train_loss": (steps, loss)})
    r = divergence(run, TH, Context())
    assert isinstance(r, list) and r[0].steps == (12, 12)
    assert "train_loss is NaN/Inf at step 12" in r[0].message


def test_divergence_from_nonfinite_total_gradient_norm() -> None:
    run = healthy_run(n=30)
    run.all_grad_norm[20:] = np.nan
    f = _codes(run)[Code.DIVERGENCE][0]
    assert f.steps is not None and f.steps[0] == 20


def test_scaler_overflow_that_recovers_is_not_divergence() -> None:
    run = healthy_run(n=30)
    run.skipped[5] = True
    run.all_grad_norm[[5, 7]] = np.inf    # step 7 not recorded as skipped, but training recovered
    assert Code.DIVERGENCE not in _codes(run)


def test_finite_runaway_loss_is_divergence_warning() -> None:
    run = healthy_run(n=60)
    tl = run.metrics["train_loss"]
    set_metric(run, "train_loss", tl.steps, np.geomspace(1.0, 500.0, tl.values.size))
    f = _codes(run)[Code.DIVERGENCE][0]
    assert f.severity is Severity.WARNING and "rose from" in f.message


def test_divergence_not_evaluated_without_anything() -> None:
    r = RULES[Code.DIVERGENCE](metrics_only_run({}), TH, Context())
    assert isinstance(r, NotEvaluated)


def test_exploding_rule_direct_call_healthy() -> None:
    assert exploding_gradients(healthy_run(seed=3), TH, Context()) == []


def test_exploding_at_init_then_tamed_by_adam() -> None:
    run = healthy_run(mlp((1, 32, 4)), n=60, optimizer="Adam", lr=1e-3)
    boost = np.ones(60)
    boost[:8] = np.geomspace(1e6, 1e3, 8)
    run.param_stats["grad_norm"] *= boost[:, None]
    recompute_total(run)
    f = _codes(run)[Code.EXPLODING_GRADIENTS][0]
    assert "over the first 6 recorded steps" in f.message


def test_early_huge_gradients_from_raw_inputs_are_left_to_unnormalized_input() -> None:
    from gradscope.store.schema import InputStats
    run = healthy_run(mlp((13, 64, 3)), n=60)
    boost = np.ones(60)
    boost[:8] = np.geomspace(1e6, 1e3, 8)
    run.param_stats["grad_norm"] *= boost[:, None]
    recompute_total(run)
    run.inputs = [(int(s), InputStats(68.0, 209.0, 0.0, 1680.0, 416, 0.12, 280.0, 750.0)) for s in run.steps[::5]]
    codes = _codes(run)
    assert Code.EXPLODING_GRADIENTS not in codes and Code.UNNORMALIZED_INPUT in codes
