"""The calibration pass's rule changes, on hand-written traces, and docs/diagnoses.md being generated.

- Activation rules ignore recorded steps at/after divergence (a NaN activation is never positive).
- ``learning_rate`` leaves out layers a vanishing-gradients finding names, and never suggests a multiplier
  that would push a normally moving layer past the target ratio.
- ``vanishing_gradients`` also fires when the output gradient fades through the hidden stack while the
  weight-relative measure stays near 1.
- ``exploding_gradients`` ignores the head's logit growth and catches a signal that blows up through the
  stack over the early window.
"""

from __future__ import annotations

import json

import numpy as np

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, NotEvaluated, Severity
from gradscope.judge.rules import dead_relu, exploding_gradients, learning_rate, vanishing_gradients
from gradscope.judge.rules._common import Context, finite_rows, first_divergent_step
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import add_nonfinite, healthy_run, mlp, set_layer, set_param

TH = Thresholds()


def _diverged_run(at: int) -> object:
    run = healthy_run(mlp((20, 64, 64, 10)), n=40, seed=3)
    rows = run.steps >= at
    for name in ("fc1", "fc2"):
        j = run.layer_index(name)
        run.layer_stats["var"][rows, j] = np.nan
        run.layer_stats["nonfinite"][rows, j] = 100
        run.layer_stats["dead"][rows, j] = run.layer_stats["units"][rows, j]   # NaN > 0 is false: all "dead"
    add_nonfinite(run, at, "activation", "fc1")
    return run


def test_first_divergent_step_and_finite_rows() -> None:
    run = _diverged_run(25)
    assert first_divergent_step(run) == 25
    assert finite_rows(run).tolist() == (run.steps < 25).tolist()
    assert first_divergent_step(healthy_run(n=20)) is None


def test_dead_relu_ignores_steps_after_divergence() -> None:
    run = _diverged_run(25)
    assert dead_relu(run, TH, Context()) == []
    # The same all-dead rows before divergence do fire: the rule itself still works.
    j = run.layer_index("fc2")
    run.layer_stats["dead"][:, j] = run.layer_stats["units"][:, j]
    found = dead_relu(run, TH, Context())
    assert isinstance(found, list) and [f.layers for f in found] == [("fc2",)]
    assert found[0].evidence["judged_before_divergence_at"] == 25


def test_dead_relu_not_evaluated_when_divergence_is_immediate() -> None:
    result = dead_relu(_diverged_run(1), TH, Context())
    assert isinstance(result, NotEvaluated) and "diverged at step 1" in result.reason


def _vanishing_sgd_run() -> object:
    """fc1–fc3 starve (tiny gradients and updates); the head moves normally."""
    layers = mlp((20, 64, 64, 64, 10), act="sigmoid")
    run = healthy_run(layers, n=60, seed=4, rel_grad=1e-2, lr=0.05)
    for name, f in (("fc1", 1e-6), ("fc2", 1e-5), ("fc3", 1e-4)):
        set_param(run, "grad_norm", f"{name}.weight", run.param_stats["grad_norm"][:, [p.name for p in
                  run.params].index(f"{name}.weight")] * f)
        set_param(run, "update_ratio", f"{name}.weight", 5e-4 * f)
        set_layer(run, "grad_norm", name, run.layer_stats["grad_norm"][:, run.layer_index(name)] * f)
    return run


def test_learning_rate_defers_to_vanishing_gradients() -> None:
    run = _vanishing_sgd_run()
    d = diagnose(run)
    assert "vanishing_gradients" in d.codes()
    assert "learning_rate" not in {f.code.value for f in d.findings if f.severity is not Severity.INFO}
    # Without the vanishing finding in the context, the rule would see a median ratio far below the band.
    alone = learning_rate(run, TH, Context())
    assert isinstance(alone, list) and alone and alone[0].evidence["direction"] == "low"


def test_learning_rate_too_low_suggests_at_most_the_target_for_the_fastest_layer() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=40, seed=5, lr=1e-4, rel_grad=1e-2)
    for k, p in enumerate(run.params):
        if p.name.endswith("weight"):
            run.param_stats["update_ratio"][:, k] = 1e-7 * (10.0 ** k)   # layers spread over two decades
    found = learning_rate(run, TH, Context())
    assert isinstance(found, list) and found
    ev = found[0].evidence
    fastest = max(v for v in ev["per_layer_ratio"].values() if np.isfinite(v))
    assert fastest * ev["lr_factor"] <= TH.lr_target_ratio * 1.0001
    assert ev["median_update_ratio"] * ev["lr_factor"] < TH.lr_target_ratio


def test_vanishing_through_the_hidden_stack_with_a_normal_weight_ratio() -> None:
    run = healthy_run(mlp((20, 32, 32, 32, 32, 2), act="tanh"), n=50, seed=6)
    for name, f in (("fc1", 1e-3), ("fc2", 1e-2), ("fc3", 1e-1)):
        set_layer(run, "grad_norm", name, run.layer_stats["grad_norm"][:, run.layer_index(name)] * f)
    found = vanishing_gradients(run, TH, Context())
    assert isinstance(found, list) and len(found) == 1
    f = found[0]
    assert f.evidence["median_hidden_output_ratio"] < TH.vanishing_hidden_ratio
    assert "fc1" in f.layers and "fc4" in f.message and f.severity is Severity.WARNING
    # A healthy trace (output gradients alike through the stack) stays quiet.
    assert vanishing_gradients(healthy_run(mlp((20, 32, 32, 32, 32, 2), act="tanh"), n=50, seed=6), TH,
                               Context()) == []


def test_head_logit_growth_is_not_exploding() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)), n=50, seed=7)
    j = run.layer_index("fc3")
    run.layer_stats["var"][:, j] = np.geomspace(1e-3, 1e4, run.steps.size)   # std 0.03 → 100
    assert exploding_gradients(run, TH, Context()) == []
    k = run.layer_index("fc2")                                                # a hidden layer doing the same
    run.layer_stats["var"][:, k] = np.geomspace(1e-3, 1e4, run.steps.size)
    found = exploding_gradients(run, TH, Context())
    assert isinstance(found, list) and found and "fc2" in found[0].layers


def test_exploding_activations_through_depth_over_the_early_window() -> None:
    run = healthy_run(mlp((20, 64, 64, 64, 10)), n=40, seed=8)
    early = np.arange(run.steps.size) < 4
    for name, std in (("fc2", 12.0), ("fc3", 150.0), ("fc4", 2000.0)):
        j = run.layer_index(name)
        run.layer_stats["var"][early, j] = std ** 2                           # blown up at init, tamed later
    found = exploding_gradients(run, TH, Context())
    assert isinstance(found, list) and found
    assert "over the first" in found[0].message and found[0].evidence["activation_depth_growth"] > 100


def test_diagnoses_md_is_what_the_generator_gives() -> None:
    from benchmarks.gen_diagnoses import OUTPUT, SNAPSHOT, generate

    text = generate(json.loads(SNAPSHOT.read_text(encoding="utf-8")))
    assert OUTPUT.read_text(encoding="utf-8") == text, "run: python benchmarks/gen_diagnoses.py"
    for code in Code:
        assert f"## `{code.value}`" in text
    for name in Thresholds.names():
        assert f"`{name}`" in text
