"""Issue 11: consequences reported as causes. A learning-rate spike in the recorded schedule and a NaN written
into a weight each set off several findings; the cause leads, the rest are its consequences (or not reported),
and each finding's confidence grows with its evidence. Hand-written traces (tests/rulecases.py), no torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.judge.rules import divergence, exploding_gradients, learning_rate, unstable_loss, vanishing_gradients
from gradscope.judge.rules._common import Context
from gradscope.judge.rules.optim import find_lr_spike
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from tests.rulecases import add_nonfinite, healthy_run, mlp, recompute_total, set_metric

TH = Thresholds()


def _spiked(n: int = 60, first: int = 30, length: int = 3, factor: float = 100.0, lr: float = 0.05) -> Run:
    run = healthy_run(n=n, lr=lr)
    run.lr = [(lr * factor,) if first <= s < first + length else (lr,) for s in run.steps.tolist()]
    return run


def _blown_up_after(run: Run, first: int) -> None:
    """What a ×100 spike does to an SGD run: weights and gradients grow by orders of magnitude from ``first``."""
    rows = run.steps >= first
    run.param_stats["norm"][rows] *= 1e3
    run.param_stats["grad_norm"][rows] *= 1e4
    run.layer_stats["var"][rows] *= 1e8
    recompute_total(run)


# ---------------------------------------------------------------- the spike is named, with steps and factor

def test_a_spike_in_the_recorded_schedule_is_named_with_its_steps_and_factor() -> None:
    run = _spiked()
    s = find_lr_spike(run, TH)
    assert s is not None and (s.first, s.last) == (30, 32) and s.before == 29 and s.after == 33
    assert s.factor == 100.0 and s.base == 0.05
    f = learning_rate(run, TH, Context())
    assert isinstance(f, list) and len(f) == 1
    f0 = f[0]
    assert f0.code is Code.LEARNING_RATE and "×100" in f0.message and "steps 30–32" in f0.message
    fixes = diagnose(run).by_code(Code.LEARNING_RATE)[0].fixes
    assert [fx.kind for fx in fixes] == [FixKind.LEARNING_RATE]
    assert "schedule" in fixes[0].summary and "steps 30–32" in fixes[0].summary
    assert 'min(group["lr"], 0.05)' in fixes[0].code      # capped at the base, not the base lowered
    compile(fixes[0].code, "<fix>", "exec")


def test_what_is_not_a_spike() -> None:
    run = healthy_run(n=60, lr=0.1)
    steps = run.steps.astype(float)
    run.lr = [(0.1 * min(1.0, (s + 1) / 20),) for s in steps]            # warm-up: nothing lower before
    assert find_lr_spike(run, TH) is None
    run.lr = [(0.1 if s < 30 else 0.01,) for s in steps]                   # step decay: only ever down
    assert find_lr_spike(run, TH) is None
    run.lr = [(0.1 * 0.5 * (1 + np.cos(np.pi * (s % 20) / 20)) + 1e-4,) for s in steps]   # warm restarts
    assert find_lr_spike(run, TH) is None
    assert find_lr_spike(_spiked(factor=2.0), TH) is None                 # a bump, not a spike
    assert find_lr_spike(_spiked(length=20), TH) is None                   # a third of the run: the base itself


def test_a_spike_is_the_cause_and_the_rest_follow_with_no_second_learning_rate() -> None:
    """The cascade of a spike: weights blown up, exploding gradients, a loss that climbs back. The report leads
    with the spike; the others are its consequences, none outranks it, and no fix lowers the base rate."""
    run = _spiked(first=30)
    _blown_up_after(run, 31)
    tl = run.metrics["train_loss"]
    vals = tl.values.copy()
    vals[tl.steps >= 31] *= 30
    set_metric(run, "train_loss", tl.steps, vals)
    d = diagnose(run)
    lead = d.findings[0]
    assert lead.code is Code.LEARNING_RATE and lead.is_root and "spiked" in lead.message
    loud = [f for f in d.findings if f.severity is not Severity.INFO]
    assert {f.code for f in loud} >= {Code.LEARNING_RATE, Code.EXPLODING_GRADIENTS}
    for f in loud:
        if f is not lead:
            assert f.caused_by, f
            assert f.severity.rank <= lead.severity.rank
    lr_fixes = [fx for f in d.findings for fx in f.fixes if fx.kind is FixKind.LEARNING_RATE]
    assert lr_fixes and all('min(group["lr"], 0.05)' in fx.code for fx in lr_fixes)
    assert not any("Set the learning rate" in fx.summary for fx in lr_fixes)


def test_the_base_rate_is_judged_before_the_spike() -> None:
    """A base rate already far too high before the spike is still reported as such (the spike on top)."""
    run = _spiked()
    run.param_stats["update_ratio"][:] = 0.5
    f = learning_rate(run, TH, Context())
    assert isinstance(f, list) and f and "too high" in f[0].message and "spiked ×100" in f[0].message
    assert getattr(f[0].detail, "spike", None) is None


# ---------------------------------------------------------------- NaN weights: divergence, not exploding

def _nan_weight(run: Run, step: int) -> None:
    """A weight written NaN at ``step``: every statistic after it is NaN, the gradients at their usual size
    up to it."""
    rows = run.steps >= step
    for table in (run.param_stats, run.layer_stats):
        for k in ("norm", "grad_norm", "var", "mean"):
            if k in table:
                table[k][rows] = np.nan
    run.param_stats["grad_nonfinite"][rows] = 1
    run.grad_norm[rows] = np.nan
    run.all_grad_norm[run.all_steps >= step] = np.nan
    add_nonfinite(run, step, "activation", "fc2")
    add_nonfinite(run, step, "loss")
    tl = run.metrics["train_loss"]
    vals = tl.values.copy()
    vals[tl.steps >= step] = np.nan
    set_metric(run, "train_loss", tl.steps, vals)


def test_nan_gradients_from_a_nan_weight_are_not_exploding() -> None:
    run = healthy_run(n=60)
    _nan_weight(run, 40)
    got = exploding_gradients(run, TH, Context())
    assert isinstance(got, list)
    assert all(f.severity is Severity.INFO for f in got) and "did not grow" in got[0].message
    d = diagnose(run)
    assert not [f for f in d.by_code(Code.EXPLODING_GRADIENTS) if f.severity is not Severity.INFO]
    div = d.findings[0]
    assert div.code is Code.DIVERGENCE and div.is_root
    assert [fx.kind for fx in div.fixes][:1] == [FixKind.TRAINING_LOOP]   # find the NaN; lowering lr won't help


def test_nan_after_growing_gradients_is_still_exploding() -> None:
    run = healthy_run(n=60)
    run.all_grad_norm[35:40] *= 1e3
    run.param_stats["grad_nonfinite"][40:] = 1
    f = exploding_gradients(run, TH, Context())
    assert isinstance(f, list) and f[0].severity is Severity.ERROR and "grew" in f[0].message


def test_a_nan_model_underfits_because_of_the_nan() -> None:
    run = healthy_run(n=60, accuracy=True)
    _nan_weight(run, 20)
    acc = run.metrics["train_acc"]
    vals = acc.values.copy()
    vals[acc.steps >= 20] = 0.1                  # argmax of NaN logits: one class, chance accuracy
    set_metric(run, "train_acc", acc.steps, vals)
    d = diagnose(run)
    under = d.by_code(Code.UNDERFITTING)
    for f in under:
        if f.severity is not Severity.INFO:
            assert f.caused_by == (Code.DIVERGENCE,) and f.fixes == ()


def test_a_layer_with_zero_gradient_is_never_named_exploding() -> None:
    """Activations of fc2 blow up but every unit is dead: its gradient is 0, so it is not exploding."""
    run = healthy_run(mlp((20, 64, 64, 64, 10)), n=60)
    j = run.layer_index("fc2")
    run.layer_stats["var"][20:, j] *= 1e8
    for name in ("fc2.weight", "fc2.bias"):
        p = [q.name for q in run.params].index(name)
        run.param_stats["grad_norm"][20:, p] = 0.0
    run.layer_stats["grad_norm"][20:, j] = 0.0
    got = exploding_gradients(run, TH, Context())
    assert isinstance(got, list)
    assert all("fc2" not in f.layers and "fc2" not in f.message for f in got)
    run.param_stats["grad_norm"][20:, [q.name for q in run.params].index("fc2.weight")] = np.nan
    got = exploding_gradients(run, TH, Context())
    assert isinstance(got, list) and all("fc2" not in f.layers for f in got)


# ---------------------------------------------------------------- confidence grows with the evidence

def _vanish(run: Run, factor: float, rows: slice) -> None:
    p = [q.name for q in run.params].index("fc1.weight")
    run.param_stats["grad_norm"][rows, p] *= factor


def test_confidence_follows_the_evidence() -> None:
    def conf(result: object) -> float:
        assert isinstance(result, list) and result
        return float(result[0].confidence)

    # vanishing: more steps below the threshold, and further below it, is more certain
    weak, strong, deep = (healthy_run(mlp((20, 64, 64, 64, 10)), n=n) for n in (20, 60, 60))
    _vanish(weak, 1e-4, slice(0, 20))
    _vanish(strong, 1e-4, slice(0, 60))
    _vanish(deep, 1e-7, slice(0, 60))
    c = [conf(vanishing_gradients(r, TH, Context())) for r in (weak, strong, deep)]
    assert 0.5 <= c[0] < c[1] < c[2] <= 1.0

    # learning rate: a larger spike, and updates further out of the band, are more certain
    assert conf(learning_rate(_spiked(factor=20), TH, Context())) < conf(learning_rate(_spiked(), TH, Context()))
    hi, higher = healthy_run(n=60), healthy_run(n=60)
    hi.param_stats["update_ratio"][:] = 0.2
    higher.param_stats["update_ratio"][:] = 2.0
    assert conf(learning_rate(hi, TH, Context())) < conf(learning_rate(higher, TH, Context()))

    # exploding: a bigger growth of the gradient norm is more certain
    small, big = healthy_run(n=60), healthy_run(n=60)
    small.all_grad_norm[20:] *= 2e2
    big.all_grad_norm[20:] *= 1e5
    assert conf(exploding_gradients(small, TH, Context())) < conf(exploding_gradients(big, TH, Context()))

    # unstable loss: more spikes are more certain
    def spikes(k: int) -> object:
        run = healthy_run(n=120)
        tl = run.metrics["train_loss"]
        vals = tl.values.copy()
        vals[np.arange(30, 30 + 10 * k, 10)] *= 50
        set_metric(run, "train_loss", tl.steps, vals)
        return unstable_loss(run, TH, Context())
    assert conf(spikes(2)) < conf(spikes(6))

    # divergence: a NaN that stays is more certain than one the run came back from
    stays, back = healthy_run(n=60), healthy_run(n=60)
    for r in (stays, back):
        add_nonfinite(r, 30, "loss")
    stays.all_grad_norm[30:] = np.nan
    back.all_grad_norm[30] = np.nan
    assert conf(divergence(back, TH, Context())) < conf(divergence(stays, TH, Context()))
    for r in (weak, strong, deep, stays, back):
        for f in diagnose(r).findings:
            assert 0.0 <= f.confidence <= 1.0


def test_gradients_huge_from_the_first_step_then_nan_are_an_explosion(tmp_path: Path) -> None:
    """A deep ReLU stack initialized with std 1.0 blows up on its first backward pass (gradient norm thousands
    of times the weight norm) and overflows on the next: there was no usual level to grow from, so the NaN is
    the explosion's — exploding_gradients fires, and the divergence does not claim a NaN got in."""
    import torch
    from torch import nn

    import gradscope
    from gradscope.store.load import load_run

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(8):
        layers += [nn.Linear(32 if i else 2, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 2))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    with pytest.warns(gradscope.GradscopeWarning, match="NaN/Inf"), \
            gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt) as scope:
        for _ in range(12):
            x, y = torch.randn(64, 2, generator=g), torch.randint(0, 2, (64,), generator=g)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            scope.log(train_loss=float(loss))
    run = load_run(tmp_path)
    first_nan = int(run.all_steps[~np.isfinite(run.all_grad_norm)].min())
    assert first_nan <= 3
    findings = diagnose(run).findings
    exploding = [f for f in findings if f.code is Code.EXPLODING_GRADIENTS and f.severity is not Severity.INFO]
    assert exploding and "already" in exploding[0].message
    div = [f for f in findings if f.code is Code.DIVERGENCE]
    assert div and not any(fx.kind is FixKind.TRAINING_LOOP for fx in div[0].fixes)
    assert not div[0].detail.sudden   # type: ignore[union-attr]


def _linked_to_the_cause(case: str, effect: Code) -> Finding:
    """The run's learning-rate finding (required by ``case``: it fires on any CPU) linked to a hand-built
    ``effect`` finding that offers every fix kind, as ``diagnose`` would link the real one. Whether the real
    one fires on a chaotic run depends on rounding (it is only allowed there), so the test does not wait for
    it: the link's conditions come from the run's own curves, which are far from any boundary."""
    import tempfile

    from gradscope.judge.causes import link
    from gradscope.store.load import load_run
    from zoo.cases import BY_NAME

    with tempfile.TemporaryDirectory() as root:
        from zoo.runner import ZooRunner

        runner = ZooRunner(root)
        diag = runner.run(BY_NAME[case]).diagnosis
        run = load_run(runner.logdir(BY_NAME[case]))
    lr = [f for f in diag.findings if f.code is Code.LEARNING_RATE and f.severity is not Severity.INFO]
    assert lr, case
    every = tuple(Fix(k, f"{k.value} fix", "") for k in FixKind)
    made = Finding(effect, Severity.WARNING, "hand-built", "hand-built consequence", fixes=every,
                   evidence={"train_loss_end": 1.0})
    out = link([replace(lr[0], consequences=(), caused_by=()), made], run, Thresholds())
    return out[1]


def test_an_underfit_another_finding_explains_is_never_told_to_widen_the_model() -> None:
    """Issue 11: underfitting under its cause said "widen model[0]". Under a spike that threw the progress
    away, neither a bigger model nor more epochs is the fix: the schedule is (a real zoo run's spike)."""
    under = _linked_to_the_cause("conseq_lr_spike_mlp_sgdm", Code.UNDERFITTING)
    assert under.caused_by == (Code.LEARNING_RATE,)
    kinds = {fx.kind for fx in under.fixes}
    assert not kinds & {FixKind.CAPACITY, FixKind.TRAIN_LONGER}, kinds
    assert FixKind.DATA in kinds            # what the cause does not rule out stays


def test_a_gap_that_opened_at_a_rate_step_up_is_the_step_ups_not_memorization() -> None:
    """MultiStepLR(gamma=10): the validation loss jumps when the rate does. An overfitting finding names the
    step-up as its cause and drops regularization, more data and a smaller model: the schedule is the fix."""
    over = _linked_to_the_cause("recipe_lr_high_resnet_multistep_gamma_10", Code.OVERFITTING)
    assert over.caused_by == (Code.LEARNING_RATE,)
    kinds = {fx.kind for fx in over.fixes}
    assert not kinds & {FixKind.REGULARIZATION, FixKind.DATA, FixKind.CAPACITY}, kinds
    assert FixKind.EARLY_STOPPING in kinds
