"""The rules engine as a whole: registry, thresholds, ignore, ordering, fixes, not-evaluated, healthy runs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from gradscope.errors import GradscopeError
from gradscope.judge.diagnose import Diagnosis, diagnose, parse_codes
from gradscope.judge.findings import Code, FixKind, Severity
from gradscope.judge.fixes import fixes_for, module_path, suggest_max_norm
from gradscope.judge.rules import RULES
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import L, healthy_run, metrics_only_run, mlp, set_layer, set_param

HEALTHY_SHAPES = [
    mlp((20, 64, 64, 10)),
    mlp((10, 32, 32, 32, 32, 32, 32, 3)),
    mlp((20, 64, 64, 10), act="tanh"),
    mlp((784, 256, 10)),
    mlp((8, 16, 1), act="gelu"),
    [L("features.0", 3 * 9, 16 * 9, "relu", type="Conv2d", units=16),
     L("features.3", 16 * 9, 32 * 9, "relu", type="Conv2d", units=32),
     L("classifier", 512, 10, None)],
]


# ---------------------------------------------------------------- registry and docs

def test_every_code_has_exactly_one_documented_rule() -> None:
    assert set(RULES) == set(Code)
    for code, rule in RULES.items():
        assert rule.code is code
        doc = rule.doc
        for section in ("Symptom:", "Detected when", "Why it matters:", "Fixes:"):
            assert section in doc, f"{code.value} docstring lacks {section!r}"
        assert rule.summary and not rule.summary.endswith(" ")


def test_every_threshold_is_documented_and_cites_why() -> None:
    docs = Thresholds.docs()
    assert set(docs) == set(Thresholds.names())
    for name, doc in docs.items():
        assert len(doc) > 40, name


def test_thresholds_override_and_from_mapping() -> None:
    t = Thresholds(dead_fraction=0.8)
    assert t.dead_fraction == 0.8 and Thresholds().dead_fraction == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.dead_fraction = 0.1  # type: ignore[misc]
    m = Thresholds.from_mapping({"dead_fraction": "0.8", "min-recorded-steps": "5", "spike_z": 4})
    assert m.dead_fraction == 0.8 and m.min_recorded_steps == 5 and isinstance(m.min_recorded_steps, int)
    assert m.spike_z == 4.0
    with pytest.raises(GradscopeError, match="unknown threshold 'dead'"):
        Thresholds.from_mapping({"dead": 1})
    with pytest.raises(GradscopeError, match="must be a number"):
        Thresholds.from_mapping({"dead_fraction": "lots"})
    with pytest.raises(GradscopeError, match="integer"):
        Thresholds.from_mapping({"min_recorded_steps": 2.5})


def test_read_side_does_not_import_torch() -> None:
    code = ("import sys, gradscope.judge.diagnose, gradscope.judge.fixes, gradscope.judge.rules; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- healthy runs stay quiet

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", range(len(HEALTHY_SHAPES)))
def test_healthy_runs_have_no_findings(shape: int, seed: int) -> None:
    run = healthy_run(HEALTHY_SHAPES[shape], seed=seed, n=40 + 15 * seed, every=1 + seed,
                      optimizer=["SGD", "Adam", "AdamW", "SGD"][seed], lr=[0.05, 1e-3, 3e-3, 0.1][seed],
                      accuracy=seed % 2 == 1)
    d = diagnose(run)
    assert d.findings == (), [f.message for f in d.findings]


def test_healthy_long_noisy_small_batch_run() -> None:
    run = healthy_run(mlp((20, 128, 128, 128, 10)), n=400, seed=7)
    rng = np.random.default_rng(1)
    tl = run.metrics["train_loss"]
    noisy = tl.values * np.exp(rng.normal(0, 0.3, size=len(tl)))   # batch-of-8 noise
    run.metrics["train_loss"] = dataclasses.replace(tl, values=noisy)
    assert [f.code for f in diagnose(run).findings if f.severity is not Severity.INFO] == []


# ---------------------------------------------------------------- diagnose()

def _broken_run() -> object:
    run = healthy_run(mlp((20, 64, 64, 10)), n=60)
    set_layer(run, "dead", "fc2", 64 * 0.95)                       # error, from step 2
    set_param(run, "update_ratio", "fc1.weight", 1e-8)             # learning_rate warning
    set_param(run, "update_ratio", "fc2.weight", 1e-8)
    set_param(run, "update_ratio", "fc3.weight", 1e-8)
    run.nonfinite.append(__import__("gradscope.store.schema", fromlist=["x"]).NonFiniteRecord(50, "loss"))
    return run


def test_findings_sorted_by_severity_then_first_step() -> None:
    d = diagnose(_broken_run())  # type: ignore[arg-type]
    ranks = [f.severity.rank for f in d.findings]
    assert ranks == sorted(ranks, reverse=True)
    codes = [f.code for f in d.findings]
    assert {Code.DEAD_RELU, Code.DIVERGENCE, Code.LEARNING_RATE} <= set(codes)
    errors = [f for f in d.findings if f.severity is Severity.ERROR]
    firsts = [f.steps[0] for f in errors if f.steps]
    assert firsts == sorted(firsts)
    assert d.worst is Severity.ERROR


def test_ignore_takes_code_strings() -> None:
    d = diagnose(_broken_run(), ignore=["dead_relu", "learning-rate"])  # type: ignore[arg-type]
    assert Code.DEAD_RELU not in {f.code for f in d.findings}
    assert Code.LEARNING_RATE not in {f.code for f in d.findings}
    assert Code.DIVERGENCE in {f.code for f in d.findings}
    assert Code.DEAD_RELU not in {n.code for n in d.not_evaluated}
    assert set(d.ignored) == {Code.DEAD_RELU, Code.LEARNING_RATE}
    with pytest.raises(GradscopeError, match="unknown finding code 'dead_relus'"):
        diagnose(_broken_run(), ignore=["dead_relus"])  # type: ignore[arg-type]
    assert parse_codes(["SATURATION"]) == (Code.SATURATION,)


def test_thresholds_passed_to_diagnose_change_verdicts() -> None:
    run = healthy_run(mlp((20, 64, 64, 10)))
    set_layer(run, "dead", "fc2", 64 * 0.6)
    assert {f.code for f in diagnose(run).findings} == {Code.DEAD_RELU}
    assert diagnose(run, Thresholds(dead_fraction=0.8)).findings == ()


def test_every_finding_has_fixes_of_valid_kinds() -> None:
    d = diagnose(_broken_run())  # type: ignore[arg-type]
    for f in d.findings:
        assert f.fixes, f.code
        for fx in f.fixes:
            assert isinstance(fx.kind, FixKind) and fx.summary
        d2 = f.to_dict()
        assert d2["code"] == f.code.value and d2["fixes"]


def test_metrics_only_run_gets_fit_rules_and_not_evaluated_for_the_rest() -> None:
    steps = np.arange(10)
    run = metrics_only_run({"train_acc": (steps, np.linspace(0.5, 0.99, 10)),
                            "val_acc": (steps, np.linspace(0.5, 0.80, 10))})
    d = diagnose(run)
    assert [f.code for f in d.findings] == [Code.OVERFITTING]
    ne = {n.code: n.reason for n in d.not_evaluated}
    for code in (Code.VANISHING_GRADIENTS, Code.EXPLODING_GRADIENTS, Code.DEAD_RELU, Code.SATURATION,
                 Code.POOR_INIT, Code.UNNORMALIZED_INPUT, Code.LEARNING_RATE):
        assert "no gradscope log" in ne[code]
    assert any("no gradscope log" in n for n in d.notes)


def test_too_few_steps_is_not_evaluated() -> None:
    run = healthy_run(n=2)
    d = diagnose(run)
    ne = {n.code: n.reason for n in d.not_evaluated}
    assert "only 2 recorded step(s)" in ne[Code.VANISHING_GRADIENTS]
    assert "only 2 recorded step(s)" in ne[Code.DEAD_RELU]


def test_baseline_error_must_be_a_fraction() -> None:
    with pytest.raises(GradscopeError, match="between 0 and 1"):
        diagnose(healthy_run(), baseline_error=5.0)


def test_diagnosis_is_frozen_dataclass_with_tuple_fields() -> None:
    d = diagnose(healthy_run())
    assert isinstance(d, Diagnosis)
    assert isinstance(d.findings, tuple) and isinstance(d.not_evaluated, tuple)
    assert d.worst is None and d.codes() == set()


# ---------------------------------------------------------------- fixes helpers

@pytest.mark.parametrize(("name", "path"), [
    ("fc2", "model.fc2"), ("encoder.0", "model.encoder[0]"),
    ("encoder.layers.3.linear1", "model.encoder.layers[3].linear1"), ("", "model"),
    ("block.class", "model.get_submodule('block.class')"), ("a.01", "model.get_submodule('a.01')"),
])
def test_module_path(name: str, path: str) -> None:
    assert module_path(name) == path


def test_clip_norm_from_healthy_early_percentile() -> None:
    run = healthy_run(n=50)
    run.all_grad_norm = np.concatenate([np.linspace(1.0, 2.0, 20), np.full(run.all_steps.size - 20, 1e4)])
    m = suggest_max_norm(run, Thresholds(), before_step=20)
    assert m == pytest.approx(float(np.percentile(np.linspace(1.0, 2.0, 20), 90)), rel=0.05)
    m50 = suggest_max_norm(run, Thresholds(clip_percentile=50), before_step=20)
    assert m50 is not None and m50 < m  # type: ignore[operator]


def test_fixes_for_unknown_evidence_does_not_crash() -> None:
    run = healthy_run()
    d = diagnose(_broken_run())  # type: ignore[arg-type]
    for f in d.findings:
        bare = dataclasses.replace(f, evidence={}, fixes=())
        assert all(fx.kind in FixKind for fx in fixes_for(bare, run))
