"""dead_relu, saturation and poor_init on hand-written traces."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import dead_relu, poor_init, saturation
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import L, healthy_run, mlp, set_layer

TH = Thresholds()


def _found(run: object, code: Code, **kw: object) -> list:
    return [f for f in diagnose(run, **kw).findings if f.code is code]  # type: ignore[arg-type]


# ---------------------------------------------------------------- dead ReLU

@pytest.mark.parametrize(("fraction", "severity"), [(0.94, Severity.ERROR), (0.6, Severity.WARNING),
                                                     (0.75, Severity.WARNING), (1.0, Severity.ERROR)])
def test_dead_relu_fires_with_message_and_fixes(fraction: float, severity: Severity) -> None:
    run = healthy_run(mlp((20, 128, 100, 10)), n=80, every=5)
    dead = np.zeros(80)
    dead[30:] = np.round(100 * fraction)
    set_layer(run, "dead", "fc2", dead)
    found = _found(run, Code.DEAD_RELU)
    assert len(found) == 1
    f = found[0]
    assert f.severity is severity and f.layers == ("fc2",)
    assert f.message.startswith(f"fc2: {round(100 * fraction)}% of 100 units never fired over steps 205–395")
    assert "(median; threshold 50%)" in f.message
    kinds = [fx.kind for fx in f.fixes]
    assert kinds == [FixKind.ACTIVATION, FixKind.INIT, FixKind.LEARNING_RATE, FixKind.BATCHNORM]
    assert "nn.LeakyReLU(0.01)" in f.fixes[0].code
    assert 'nn.init.kaiming_normal_(model.fc2.weight, nonlinearity="relu")' in f.fixes[1].code
    assert "nn.init.zeros_(model.fc2.bias)" in f.fixes[1].code
    assert "model.fc2 = nn.Sequential(model.fc2, nn.BatchNorm1d(100, device=device))" in f.fixes[3].code


def test_dead_relu_names_nested_layers_as_python_paths() -> None:
    layers = [L("encoder.0", 20, 64), L("encoder.2", 64, 64), L("head", 64, 10, None)]
    run = healthy_run(layers, n=40)
    set_layer(run, "dead", "encoder.2", 60)
    f = _found(run, Code.DEAD_RELU)[0]
    assert f.layers == ("encoder.2",)
    assert "model.encoder[2].weight" in f.fixes[1].code


def test_dead_relu_in_conv_channels_suggests_batchnorm2d() -> None:
    layers = [L("conv1", 27, 16 * 9, type="Conv2d", units=16), L("conv2", 144, 32 * 9, type="Conv2d", units=32),
              L("fc", 512, 10, None)]
    run = healthy_run(layers, n=40)
    set_layer(run, "dead", "conv2", 30)
    f = _found(run, Code.DEAD_RELU)[0]
    assert "30 of 32" not in f.message and "94% of 32 units" in f.message
    assert any("nn.BatchNorm2d(32, device=device)" in fx.code for fx in f.fixes)


def test_dead_relu_threshold_override() -> None:
    run = healthy_run(n=40)
    set_layer(run, "dead", "fc2", 64 * 0.7)
    assert _found(run, Code.DEAD_RELU)
    assert not _found(run, Code.DEAD_RELU, thresholds=Thresholds(dead_fraction=0.8))


def test_units_dead_only_early_then_recovered_are_fine() -> None:
    run = healthy_run(n=60)
    dead = np.zeros(60)
    dead[:20] = 60
    set_layer(run, "dead", "fc1", dead)
    assert not _found(run, Code.DEAD_RELU)


def test_dead_units_after_leaky_or_gelu_are_not_judged() -> None:
    for act in ("leaky_relu", "gelu", "elu"):
        run = healthy_run(mlp((20, 64, 64, 10), act=act), n=30)
        run.layer_stats["dead"][:, :2] = 64
        r = dead_relu(run, TH, Context())
        assert isinstance(r, NotEvaluated), act


def test_elementwise_sparsity_alone_is_not_dead() -> None:
    run = healthy_run(n=40)
    run.layer_stats["zero_frac"][:, :2] = 0.55       # healthy ReLU sparsity
    run.layer_stats["inactive"][:, :2] = 20           # some units silent on one batch
    assert not _found(run, Code.DEAD_RELU)


def test_dead_relu_waits_for_a_full_window() -> None:
    run = healthy_run(n=4, dead_window=10)
    run.layer_stats["dead"][:, 0] = 64                # "never positive so far" on 4 steps, window 10
    r = dead_relu(run, TH, Context())
    # the window never filled: the last available steps are judged, which is still flagged, but only from
    # the steps after dead_window - 1 (clamped to the last one)
    assert isinstance(r, list) and r and r[0].steps == (3, 3)


# ---------------------------------------------------------------- saturation

@pytest.mark.parametrize(("act", "fraction", "severity"), [
    ("tanh", 0.8, Severity.WARNING), ("sigmoid", 0.95, Severity.ERROR), ("tanh", 0.55, Severity.WARNING)])
def test_saturation_fires(act: str, fraction: float, severity: Severity) -> None:
    run = healthy_run(mlp((20, 64, 64, 10), act=act), n=50)
    sat = np.full(50, round(64 * fraction))
    sat[:10] = 2
    set_layer(run, "saturated", "fc1", sat)
    set_layer(run, "dmean", "fc1", 0.05)
    f = _found(run, Code.SATURATION)[0]
    assert f.severity is severity and f.layers == ("fc1",)
    assert f.evidence["mean_derivative"] == pytest.approx(0.05)
    assert "of 64 units saturated" in f.message
    kinds = {fx.kind for fx in f.fixes}
    assert {FixKind.INIT, FixKind.BATCHNORM, FixKind.ACTIVATION} <= kinds
    init = next(fx for fx in f.fixes if fx.kind is FixKind.INIT)
    assert f'nn.init.xavier_normal_(model.fc1.weight, gain=nn.init.calculate_gain("{act}"))' in init.code


def test_saturated_output_sigmoid_is_by_design() -> None:
    layers = [L("fc1", 20, 64), L("fc2", 64, 64), L("out", 64, 1, "sigmoid")]
    run = healthy_run(layers, n=40)
    run.layer_stats["saturated"][:, 2] = 1
    run.layer_stats["units"][:, 2] = 1
    r = saturation(run, TH, Context())
    assert isinstance(r, NotEvaluated)


def test_saturation_healthy_tanh() -> None:
    for seed in range(3):
        run = healthy_run(mlp((20, 64, 64, 64, 10), act="tanh"), n=40, seed=seed)
        assert saturation(run, TH, Context()) == []


# ---------------------------------------------------------------- poor init

def _collapse(run: object, per_layer: float) -> None:
    """Activation variance multiplied by per_layer at each depth (the forward signal at init)."""
    n_layers = len(run.layers)  # type: ignore[attr-defined]
    run.layer_stats["var"] *= per_layer ** np.arange(n_layers)[None, :]  # type: ignore[attr-defined]


def test_poor_init_too_small_with_collapsing_signal() -> None:
    widths = (20,) + (64,) * 6 + (10,)
    run = healthy_run(mlp(widths, init_std=0.01), n=40)       # var 1e-4 vs He 2/64 ≈ 0.03
    _collapse(run, 64 * 1e-4)                                 # per-layer variance factor ≈ fan_in·Var(w)
    found = _found(run, Code.POOR_INIT)
    assert found, [f.message for f in diagnose(run).findings]
    f = found[0]
    assert "fc1" in f.layers and "fc2" in f.layers
    assert "He target" in f.message and "shows as" in f.message
    init = next(fx for fx in f.fixes if fx.kind is FixKind.INIT)
    assert 'nn.init.kaiming_normal_(model.fc2.weight, nonlinearity="relu")' in init.code


def test_poor_init_too_large_tanh_with_saturation() -> None:
    run = healthy_run(mlp((20, 128, 128, 10), act="tanh", init_std=1.0), n=40)   # var 1 vs Glorot 1/128
    run.layer_stats["saturated"][:, :2] = 120
    f = _found(run, Code.POOR_INIT)[0]
    assert {"fc1", "fc2"} <= set(f.layers)
    assert "Glorot" in f.message
    assert _found(run, Code.SATURATION)


def test_mis_scaled_init_that_does_not_show_is_not_flagged() -> None:
    run = healthy_run(mlp((20, 64, 64, 10), init_std=0.01), n=40)
    assert poor_init(run, TH, Context()) == []


@pytest.mark.parametrize("widths", [(20, 64, 10), (784, 256, 10), (2, 512, 512, 1), (10, 32, 32, 32, 32, 3)])
def test_pytorch_default_init_never_triggers_on_its_own(widths: tuple[int, ...]) -> None:
    for act in ("relu", "tanh", None):
        run = healthy_run(mlp(widths, act=act), n=30)       # init_std = sqrt(1/(3 fan_in))
        _collapse(run, 1 / 6)                               # even with the signal shrinking
        assert poor_init(run, TH, Context()) == [], (widths, act)


def test_zero_initialized_hidden_layer_breaks_no_symmetry() -> None:
    layers = [L("fc1", 20, 64, init_std=0.0), L("fc2", 64, 64), L("out", 64, 10, None, init_std=0.0)]
    run = healthy_run(layers, n=30)
    f = _found(run, Code.POOR_INIT)[0]
    assert f.layers == ("fc1",)            # a zero-initialized head is a common, harmless choice
    assert "all weights equal" in f.message


def test_selu_with_lecun_init_is_fine() -> None:
    widths = (20, 64, 64, 64, 10)
    layers = [L(f"fc{i + 1}", widths[i], widths[i + 1], "selu" if i < 3 else None,
                init_std=float(np.sqrt(1 / widths[i]))) for i in range(4)]
    run = healthy_run(layers, n=30)
    _collapse(run, 0.2)
    assert poor_init(run, TH, Context()) == []


def test_poor_init_not_evaluated_without_init_stats() -> None:
    run = healthy_run(n=20)
    run.params = tuple(p.__class__(p.name, p.layer, p.shape, p.numel, None, None) for p in run.params)
    r = poor_init(run, TH, Context())
    assert isinstance(r, NotEvaluated) and "no initial weight statistics" in r.reason


def test_saturation_by_low_mean_derivative() -> None:
    """Pre-activations with std ≈ 8: no unit pinned on every sample, but most inputs sit in the flat tails."""
    run = healthy_run(mlp((64, 128, 128, 10), act="sigmoid", init_std=1.0), n=40)
    run.layer_stats["dmean"][:, :2] = 0.2
    run.layer_stats["saturated"][:, :2] = 3
    found = _found(run, Code.SATURATION)
    assert [f.layers for f in found] == [("fc1",), ("fc2",)]
    assert "mean sigmoid derivative 20% of its maximum" in found[0].message
    pi = _found(run, Code.POOR_INIT)
    # The large init shows in what it measurably does to fc1 (not in "saturation was found too").
    assert pi and "fc1's mean sigmoid derivative is 20% of its maximum on the first steps" in pi[0].message
    assert "alongside" not in pi[0].message
    assert not _found(run, Code.SATURATION, thresholds=Thresholds(saturation_dmean=0.1))


def test_poor_init_is_judged_on_the_init_not_on_other_findings() -> None:
    """A mis-scaled init that leaves no measurable trace (no depth change, no early saturation) is not a
    finding, even when exploding gradients and saturation were found in the same run (issue 11: poor_init once
    fired on "found alongside exploding_gradients")."""
    from gradscope.judge.findings import Finding

    run = healthy_run(mlp((64, 128, 128, 10), act="sigmoid", init_std=1.0), n=40)
    ctx = Context(findings=[Finding(c, Severity.ERROR, "t", "m") for c in
                            (Code.EXPLODING_GRADIENTS, Code.VANISHING_GRADIENTS, Code.SATURATION)])
    assert poor_init(run, TH, ctx) == []
    run.layer_stats["dmean"][:, :2] = 0.2                # now the init measurably pins fc1 and fc2
    found = poor_init(run, TH, Context())
    assert isinstance(found, list) and found and found[0].layers[:2] == ("fc1", "fc2")
