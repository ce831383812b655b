"""The training-loop rules (judge/rules/loop.py) on hand-built logs: param_not_updated, no_gradient, lr_plateau.

Each log is written with the real ``LogWriter`` and records (tests/logfactory.py's header and layer rows); only
the per-parameter rows, the learning rates and the metrics are chosen per test. Every rule is checked on the bug
and on its healthy look-alike, and each fix snippet is compiled, resolved against the run's names and, where it
needs only ``model``/``optimizer``, executed against a real model with the same names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import RULES, lr_plateau, no_gradient, param_not_updated
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from gradscope.store.jsonl import LogWriter, log_path
from gradscope.store.load import load
from gradscope.store.run import Run
from gradscope.store.schema import (
    LAYER_FIELDS,
    PARAM_FIELDS,
    CloseRecord,
    Header,
    LayerInfo,
    MetricsRecord,
    StepRecord,
    activations_record,
)
from tests.judge.snippets import check_fix
from tests.logfactory import healthy_layer, make_header

TH = Thresholds()
PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")

ParamFn = Callable[[int, str], Mapping[str, float | None] | None]
"""(step, parameter name) → its row by field name, or None for no row at all."""
LayerFn = Callable[[int, int, LayerInfo], Mapping[str, float | None] | None]


def healthy_param(step: int, name: str) -> dict[str, float | None]:
    return {"grad_norm": 0.1 / (1 + 0.1 * step), "norm": 1.0 + 0.001 * step, "update_ratio": 1e-3,
            "grad_nonfinite": 0.0}


def write(tmp: Path, *, steps: int = 30, param: ParamFn = healthy_param, layer: LayerFn = healthy_layer,
          lr: Callable[[int], tuple[float, ...]] | None = lambda s: (0.1,),
          metrics: Mapping[int, Mapping[str, float]] | None = None, header: Header | None = None) -> Run:
    """A log of ``steps`` recorded steps in ``tmp``, loaded back as a Run."""
    header = header or make_header()
    w = LogWriter(log_path(tmp))
    try:
        w.write(header.to_dict())
        w.write(activations_record({la.name: la.act for la in header.layers if la.act}))
        for s in range(steps):
            rows = []
            for i, la in enumerate(header.layers):
                st = layer(s, i, la)
                rows.append(None if st is None else tuple(st.get(f) for f in LAYER_FIELDS))
            prow = []
            for p in header.params:
                pv = param(s, p.name)
                prow.append(None if pv is None else tuple(pv.get(f) for f in PARAM_FIELDS))
            rec = StepRecord(step=s, time=0.01 * s, layers=tuple(rows), params=tuple(prow), grad_norm=1.0,
                             grad_norm_steps=((s, 1.0),), lr=lr(s) if lr is not None else ())
            w.write(rec.to_dict())
            if metrics and s in metrics:
                w.write(MetricsRecord(step=s, values=dict(metrics[s])).to_dict())
        for s in sorted(k for k in (metrics or {}) if k >= steps):
            w.write(MetricsRecord(step=s, values=dict(metrics[s])).to_dict())   # type: ignore[index]
        w.write(CloseRecord(step=steps - 1, time=0.01 * steps).to_dict())
    finally:
        w.close()
    return load(tmp, warn=False)[0]


def findings(result: list[Finding] | NotEvaluated) -> list[Finding]:
    assert not isinstance(result, NotEvaluated), result
    return result


def real_model():  # type: ignore[no-untyped-def]
    """A torch model with the logfactory MLP's names (fc1, fc2, fc3)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 3)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    return torch, nn, MLP()


# ------------------------------------------------------------------------------------------ param_not_updated

def not_in_optimizer(names: tuple[str, ...], *, grad: float = 0.05) -> ParamFn:
    def fn(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        if name in names:
            row.update(grad_norm=grad * (1 + step), update_ratio=0.0)   # gradients pile up, weights never move
        return row
    return fn


def test_param_not_updated_names_the_layer_steps_and_gradient(tmp_path: Path) -> None:
    run = write(tmp_path, param=not_in_optimizer(("fc3.weight", "fc3.bias")))
    (f,) = findings(param_not_updated(run, TH, Context()))
    assert f.code is Code.PARAM_NOT_UPDATED and f.severity is Severity.WARNING
    assert f.layers == ("fc3",) and f.steps == (0, 29)
    assert f.evidence["params"] == ["fc3.weight", "fc3.bias"] and f.evidence["lr_recorded"] is True
    assert f.evidence["judged_steps"]["fc3.weight"] == 30
    assert "fc3" in f.message and "not in the optimizer" in f.message
    assert f.confidence == pytest.approx(30 / (30 + TH.not_updated_min_steps))


def test_param_not_updated_fix_adds_exactly_the_missing_parameters(tmp_path: Path) -> None:
    run = write(tmp_path, param=not_in_optimizer(("fc3.weight", "fc3.bias")))
    diag = diagnose(run)
    (f,) = diag.by_code(Code.PARAM_NOT_UPDATED)
    assert {fx.kind for fx in f.fixes} == {FixKind.TRAINING_LOOP} and len(f.fixes) == 2
    for fx in f.fixes:
        assert check_fix(fx, run) == []
    add = f.fixes[1]
    assert "model.fc3.parameters()" in add.code and "add_param_group" in add.code
    torch, nn, model = real_model()
    opt = torch.optim.SGD([*model.fc1.parameters(), *model.fc2.parameters()], lr=0.1)   # the bug
    exec(compile(add.code, "<fix>", "exec"), {"model": model, "optimizer": opt, "torch": torch, "nn": nn})
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held}) == 6
    assert any(p is model.fc3.weight for p in opt.param_groups[-1]["params"])
    # Run again on the fixed optimizer: adds nothing twice (an empty group), no error.
    exec(compile(add.code, "<fix>", "exec"), {"model": model, "optimizer": opt, "torch": torch, "nn": nn})
    assert len({id(p) for g in opt.param_groups for p in g["params"]}) == 6
    rebuild = f.fixes[0]
    ns = {"model": model, "optimizer": opt, "torch": torch, "nn": nn}
    exec(compile(rebuild.code, "<fix>", "exec"), ns)
    assert len(ns["optimizer"].param_groups[0]["params"]) == 6


def test_a_zero_learning_rate_step_is_not_evidence(tmp_path: Path) -> None:
    """Zero-lr warm-up: while the recorded lr is 0 nothing moves; a parameter still at 0 then is not judged."""
    def warm(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        if step < 10:
            row["update_ratio"] = 0.0
        return row
    run = write(tmp_path, param=warm, lr=lambda s: (0.0 if s < 10 else 0.1,))
    assert findings(param_not_updated(run, TH, Context())) == []
    # The same log with one param group frozen at lr 0 all along: no judged step, nothing to say.
    run2 = write(tmp_path / "frozen_group", param=not_in_optimizer(("fc3.weight",)), lr=lambda s: (0.1, 0.0))
    assert findings(param_not_updated(run2, TH, Context())) == []


def test_without_a_recorded_lr_the_first_steps_are_left_out(tmp_path: Path) -> None:
    def warm(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        if step < TH.not_updated_skip_steps and name.startswith("fc3"):
            row["update_ratio"] = 0.0       # a warm-up gradscope cannot see, then it moves
        return row
    run = write(tmp_path, param=warm, lr=None)
    assert findings(param_not_updated(run, TH, Context())) == []
    run2 = write(tmp_path / "bug", param=not_in_optimizer(("fc3.weight",)), lr=None)
    (f,) = findings(param_not_updated(run2, TH, Context()))
    n = 30 - TH.not_updated_skip_steps
    assert f.steps == (TH.not_updated_skip_steps, 29) and f.evidence["lr_recorded"] is False
    assert f.confidence == pytest.approx(0.8 * n / (n + TH.not_updated_min_steps))


def test_param_not_updated_stays_silent_on_its_look_alikes(tmp_path: Path) -> None:
    # No gradient at all (off the loss path, frozen mid-run): not this rule's.
    def no_grad(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        if name.startswith("fc3"):
            row.update(grad_norm=None, update_ratio=0.0)
        return row
    assert findings(param_not_updated(write(tmp_path / "a", param=no_grad), TH, Context())) == []
    # Nothing moved on any step (accumulation micro-steps, an optimizer never stepped): no contrast.
    def still(step: int, name: str) -> dict[str, float | None]:
        return {**healthy_param(step, name), "update_ratio": 0.0}
    assert findings(param_not_updated(write(tmp_path / "b", param=still), TH, Context())) == []
    # A gradient so small its update would round away in float32 (vanishing gradients).
    tiny = not_in_optimizer(("fc1.weight",), grad=1e-12)
    assert findings(param_not_updated(write(tmp_path / "c", param=tiny), TH, Context())) == []
    # Moved once: it is in the optimizer.
    def once(step: int, name: str) -> dict[str, float | None]:
        row = not_in_optimizer(("fc3.weight",))(step, name)
        return {**row, "update_ratio": 1e-3} if step == 20 and name == "fc3.weight" else row
    assert findings(param_not_updated(write(tmp_path / "d", param=once), TH, Context())) == []


def test_param_not_updated_needs_enough_steps(tmp_path: Path) -> None:
    run = write(tmp_path, steps=TH.not_updated_min_steps - 1, param=not_in_optimizer(("fc3.weight",)))
    assert findings(param_not_updated(run, TH.replace(min_recorded_steps=1), Context())) == []
    run2 = write(tmp_path / "ok", steps=TH.not_updated_min_steps, param=not_in_optimizer(("fc3.weight",)))
    assert len(findings(param_not_updated(run2, TH.replace(min_recorded_steps=1), Context()))) == 1


# -------------------------------------------------------------------------------------------------- no_gradient

def detached(layer_name: str, *, out_grad: float | None = None, moves: bool = False) -> tuple[ParamFn, LayerFn]:
    def param(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        if name.startswith(layer_name + "."):
            row.update(grad_norm=None, grad_nonfinite=None, update_ratio=1e-3 if moves else 0.0)
        return row

    def layer(step: int, i: int, la: LayerInfo) -> dict[str, float | None]:
        row = healthy_layer(step, i, la)
        if la.name == layer_name:
            row["grad_norm"] = out_grad
        return row
    return param, layer


def test_no_gradient_names_the_detached_layer(tmp_path: Path) -> None:
    param, layer = detached("fc1")
    run = write(tmp_path, param=param, layer=layer)
    (f,) = findings(no_gradient(run, TH, Context()))
    assert f.code is Code.NO_GRADIENT and f.layers == ("fc1",) and f.steps == (0, 29)
    assert f.evidence["params"] == ["fc1.weight", "fc1.bias"] and f.evidence["numel"] == 20 * 64 + 64
    assert f.evidence["steps_ran"] == {"fc1": 30}
    assert "off the loss path" in f.message
    assert f.confidence == pytest.approx(30 / (30 + TH.no_gradient_min_steps))


def test_no_gradient_fixes_compile_and_the_freeze_runs(tmp_path: Path) -> None:
    param, layer = detached("fc2")
    run = write(tmp_path, param=param, layer=layer)
    (f,) = diagnose(run).by_code(Code.NO_GRADIENT)
    assert len(f.fixes) == 2
    for fx in f.fixes:
        assert check_fix(fx, run) == []
    assert f.fixes[1].code.splitlines() == ["model.fc2.weight.requires_grad_(False)",
                                            "model.fc2.bias.requires_grad_(False)"]
    torch, nn, model = real_model()
    exec(compile(f.fixes[1].code, "<fix>", "exec"), {"model": model, "torch": torch, "nn": nn})
    assert not any(p.requires_grad for p in model.fc2.parameters())
    assert all(p.requires_grad for p in model.fc1.parameters())
    check = f.fixes[0]
    model.fc2.requires_grad_(True)
    model(torch.randn(4, 20)).sum().backward()
    ns: dict[str, object] = {"model": model}
    exec(compile(check.code, "<fix>", "exec"), ns)
    assert ns["missing"] == []
    model.fc2.weight.grad = None          # the bug: fc2 got no gradient
    with pytest.raises(AssertionError, match=r"fc2\.weight"):
        exec(compile(check.code, "<fix>", "exec"), ns)


def test_no_gradient_stays_silent_on_its_look_alikes(tmp_path: Path) -> None:
    # A module used only at inference: it never runs in a training forward (no layer row).
    param, on_path = detached("fc2")

    def never_called(step: int, i: int, la: LayerInfo) -> dict[str, float | None] | None:
        return None if la.name == "fc2" else healthy_layer(step, i, la)
    assert findings(no_gradient(write(tmp_path / "a", param=param, layer=never_called), TH, Context())) == []
    # On the loss path but dead: the output gradient is recorded (0), the parameters' gradient is 0.
    def zero(step: int, name: str) -> dict[str, float | None]:
        row = healthy_param(step, name)
        return {**row, "grad_norm": 0.0, "update_ratio": 0.0} if name.startswith("fc2") else row
    _, dead_layer = detached("fc2", out_grad=0.0)
    assert findings(no_gradient(write(tmp_path / "b", param=zero, layer=dead_layer), TH, Context())) == []
    # Weights that change without a gradient: an EMA/momentum encoder updated by hand.
    ema_param, ema_layer = detached("fc2", moves=True)
    assert findings(no_gradient(write(tmp_path / "c", param=ema_param, layer=ema_layer), TH, Context())) == []
    # Nothing gets a gradient (backward never called): not one layer's wiring.
    def none(step: int, name: str) -> dict[str, float | None]:
        return {**healthy_param(step, name), "grad_norm": None, "update_ratio": 0.0}
    _, no_out = detached("fc2")
    assert findings(no_gradient(write(tmp_path / "d", param=none, layer=no_out), TH, Context())) == []
    # It got a gradient once: on the loss path (a branch used now and then).
    def once(step: int, name: str) -> dict[str, float | None]:
        row = param(step, name)
        return healthy_param(step, name) if step == 7 else row
    assert findings(no_gradient(write(tmp_path / "e", param=once, layer=on_path), TH, Context())) == []


# -------------------------------------------------------------------------------------------------- lr_plateau

def curve(values: list[float], every: int = 10, acc: list[float] | None = None) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for i, v in enumerate(values):
        out[(i + 1) * every - 1] = {"train_loss": v, **({"train_acc": acc[i]} if acc else {})}
    return out


def plateau_values(n: int = 30, level: float = 1.5, wiggle: float = 0.004) -> list[float]:
    """Falls from 2.3 over the first third, then sits at ``level`` with a small deterministic wiggle."""
    k = n // 3
    return [2.3 - (2.3 - level) * i / k if i < k else level * (1 + wiggle * math.sin(1.7 * i)) for i in range(n)]


def test_lr_plateau_fires_with_the_window_the_lr_and_the_numbers(tmp_path: Path) -> None:
    run = write(tmp_path, steps=300, metrics=curve(plateau_values(), acc=[0.6] * 30))
    (f,) = findings(lr_plateau(run, TH, Context()))
    assert f.code is Code.LR_PLATEAU and f.severity is Severity.WARNING
    assert f.steps == (189, 299) and f.evidence["window_points"] == 12
    assert f.evidence["lr"] == [0.1] and f.evidence["train_error"] == pytest.approx(0.4)
    assert abs(f.evidence["improvement"]) < TH.plateau_flat_improvement
    assert f.evidence["drop"] == pytest.approx(1 - 1.5 / 2.3, rel=0.01)
    assert "flat at 1.5" in f.message and "learning rate 0.1 unchanged" in f.message
    assert 0.5 <= f.confidence <= 1.0


def test_lr_plateau_fixes_carry_the_runs_numbers_and_run(tmp_path: Path) -> None:
    run = write(tmp_path, steps=300, metrics=curve(plateau_values(), acc=[0.6] * 30))
    (f,) = diagnose(run).by_code(Code.LR_PLATEAU)
    assert [fx.kind for fx in f.fixes] == [FixKind.LEARNING_RATE, FixKind.LEARNING_RATE]
    reduce, cosine = f.fixes
    assert "ReduceLROnPlateau(optimizer" in reduce.code and "factor=0.1" in reduce.code
    assert f"patience={int(12 * TH.plateau_patience_fraction)}" in reduce.code
    assert "every 10 steps" in reduce.code and "#     scheduler.step(train_loss)" in reduce.code
    assert "T_max=300" in cosine.code
    for fx in f.fixes:
        assert check_fix(fx, run) == []
    torch, nn, model = real_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ns = {"model": model, "optimizer": opt, "torch": torch, "nn": nn, "train_loss": 1.5}
    code = reduce.code
    exec(compile(code, "<fix>", "exec"), ns)
    for _ in range(int(12 * TH.plateau_patience_fraction) + 2):   # the first call sets the best loss
        ns["scheduler"].step(1.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)   # the plateau lowers the learning rate


def test_lr_plateau_stays_silent_on_its_look_alikes(tmp_path: Path) -> None:
    metrics = curve(plateau_values(), acc=[0.6] * 30)
    # Converged: zero training error.
    conv = write(tmp_path / "a", steps=300, metrics=curve(plateau_values(level=0.02), acc=[1.0] * 30))
    assert findings(lr_plateau(conv, TH, Context())) == []
    # The learning rate was decayed before the window (a schedule is already there).
    decayed = write(tmp_path / "b", steps=300, metrics=metrics, lr=lambda s: (0.1 if s < 150 else 0.01,))
    assert findings(lr_plateau(decayed, TH, Context())) == []
    # It changes inside the window.
    moving = write(tmp_path / "c", steps=300, metrics=metrics, lr=lambda s: (0.1 if s < 250 else 0.05,))
    assert findings(lr_plateau(moving, TH, Context())) == []
    # A second param group frozen at lr 0 all along does not hide the plateau of the first.
    two = write(tmp_path / "h", steps=300, metrics=metrics, lr=lambda s: (0.1, 0.0))
    (f,) = findings(lr_plateau(two, TH, Context()))
    assert f.evidence["lr"] == [0.1, 0.0] and "learning rate 0.1 (2 param groups)" in f.message
    # A warm-up before the window is fine: the rate never was higher.
    warm = write(tmp_path / "d", steps=300, metrics=metrics, lr=lambda s: (min(0.1, 0.01 * (s + 1)),))
    assert len(findings(lr_plateau(warm, TH, Context()))) == 1
    # Still improving, slowly but steadily.
    slow = [2.3 * 0.995 ** i for i in range(30)]
    assert findings(lr_plateau(write(tmp_path / "e", steps=300, metrics=curve(slow, acc=[0.6] * 30)), TH,
                               Context())) == []
    # Flat from the start: stuck, not a plateau after progress.
    stuck = [2.3 * (1 + 0.004 * math.sin(i)) for i in range(30)]
    assert findings(lr_plateau(write(tmp_path / "f", steps=300, metrics=curve(stuck, acc=[0.1] * 30)), TH,
                               Context())) == []
    # Noisy, few points: the estimate moves by more than the band, not called flat.
    noisy = plateau_values(wiggle=0.08)
    assert findings(lr_plateau(write(tmp_path / "g", steps=300, metrics=curve(noisy, acc=[0.6] * 30)), TH,
                               Context())) == []


def test_lr_plateau_without_an_error_metric_uses_the_loss_scale(tmp_path: Path) -> None:
    high = write(tmp_path / "a", steps=300, metrics=curve(plateau_values(level=1.0)))
    assert len(findings(lr_plateau(high, TH, Context()))) == 1
    low = write(tmp_path / "b", steps=300, metrics=curve(plateau_values(level=0.05)))   # 2% of its start
    assert findings(lr_plateau(low, TH, Context())) == []


def test_lr_plateau_bins_a_long_per_step_curve(tmp_path: Path) -> None:
    values = plateau_values(n=3000, wiggle=0.002)
    run = write(tmp_path, steps=3000, metrics=curve(values, every=1, acc=None), param=lambda s, n: None)
    (f,) = findings(lr_plateau(run, TH, Context()))
    assert f.evidence["window_points"] == 1200 and f.steps == (1800, 2999)


def test_lr_plateau_says_what_it_needs(tmp_path: Path) -> None:
    no_lr = write(tmp_path / "a", steps=300, metrics=curve(plateau_values(), acc=[0.6] * 30), lr=None)
    res = RULES[Code.LR_PLATEAU](no_lr, TH, Context())
    assert isinstance(res, NotEvaluated) and "optimizer=" in res.reason
    no_loss = write(tmp_path / "b", steps=300)
    res2 = RULES[Code.LR_PLATEAU](no_loss, TH, Context())
    assert isinstance(res2, NotEvaluated) and "train_loss" in res2.reason
    diag = diagnose(no_lr)
    assert Code.LR_PLATEAU in {ne.code for ne in diag.not_evaluated}


def test_no_gradient_says_what_it_needs(tmp_path: Path) -> None:
    param, _ = detached("fc1")

    def no_calls(step: int, i: int, la: LayerInfo) -> dict[str, float | None]:
        return {**healthy_layer(step, i, la), "calls": None}
    run = write(tmp_path, param=param, layer=no_calls)
    res = RULES[Code.NO_GRADIENT](run, TH, Context())
    assert isinstance(res, NotEvaluated) and "calls" in res.reason


def test_the_loop_rules_are_registered_and_documented() -> None:
    for code in (Code.PARAM_NOT_UPDATED, Code.NO_GRADIENT, Code.LR_PLATEAU):
        rule = RULES[code]
        assert rule.family == "loop"
        for part in ("Symptom:", "Detected when", "Confidence:", "Why it matters:", "Fixes:"):
            assert part in rule.doc, (code, part)
        for name in Thresholds.names():
            if f"``{name}``" in rule.doc:
                assert name in Thresholds.docs()
