"""Issue 11: the learning rate judged through its schedule. A lasting step up in the recorded rate is named (with
the harm after it and a schedule fix), a step decay, a warm-up, warm restarts or a spike are not; ratios are
scaled to the schedule's peak, so a peak too high is caught under a cosine tail and a sane warm-up + cosine stays
quiet; for Adam-like optimizers a peak rate large against the weights' initial scale is too high when the run
shows the damage. Hand-written traces (tests/rulecases.py), no torch."""

from __future__ import annotations

import numpy as np

from gradscope.judge.causes import link
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, FixKind, Severity
from gradscope.judge.rules import learning_rate
from gradscope.judge.rules._common import Context
from gradscope.judge.rules.gradients import ExplodingDetail
from gradscope.judge.rules.optim import (
    LearningRateDetail,
    LrInitStep,
    find_lr_spike,
    find_lr_step_up,
)
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run
from tests.rulecases import healthy_run, set_metric

TH = Thresholds()


def _lr_found(run: Run) -> list[Finding]:
    f = learning_rate(run, TH, Context())
    assert isinstance(f, list)
    return f


# ---------------------------------------------------------------- a lasting step up

def _stepped_up(n: int = 60, at: int = 30, factor: float = 10.0, lr: float = 0.05) -> Run:
    """MultiStepLR(gamma=factor) with one milestone at step ``at``: the rate jumps and stays."""
    run = healthy_run(n=n, lr=lr, accuracy=True)
    run.lr = [(lr * factor if s >= at else lr,) for s in run.steps.tolist()]
    return run


def _loss_jumps_after(run: Run, at: int, by: float = 20.0) -> None:
    for key in ("train_loss", "val_loss"):
        s = run.metrics[key]
        v = s.values.copy()
        v[s.steps >= at] *= by
        set_metric(run, key, s.steps, v)


def test_a_lasting_step_up_is_named_with_its_step_old_and_new_rate() -> None:
    run = _stepped_up()
    u = find_lr_step_up(run, TH)
    assert u is not None and (u.step, u.before, u.last) == (30, 29, 59)
    assert np.isclose(u.old, 0.05) and np.isclose(u.new, 0.5) and np.isclose(u.factor, 10.0)
    assert find_lr_spike(run, TH) is None                 # it never comes back: not a spike
    _loss_jumps_after(run, 30)
    (f,) = _lr_found(run)
    assert "stepped up ×10 at step 30" in f.message and "0.5" in f.message and "0.05" in f.message
    assert "val loss" in f.message and f.steps == (30, 59)
    d = diagnose(run)
    (lr,) = d.by_code(Code.LEARNING_RATE)
    assert [fx.kind for fx in lr.fixes] == [FixKind.LEARNING_RATE]
    assert "step up" in lr.fixes[0].summary and "gamma" in lr.fixes[0].summary
    assert 'min(group["lr"], 0.05)' in lr.fixes[0].code       # capped at the old rate, the base not lowered
    compile(lr.fixes[0].code, "<fix>", "exec")
    assert not any("Set the learning rate" in fx.summary for f2 in d.findings for fx in f2.fixes)


def test_a_step_up_that_did_no_harm_is_quiet() -> None:
    """A constant warm-up (a low rate, then the base: He et al. 2016) steps up for good, and training goes on
    improving: nothing to report."""
    run = _stepped_up(lr=0.005)
    assert find_lr_step_up(run, TH) is not None
    assert _lr_found(run) == []


def test_a_bad_base_rate_before_the_step_up_leads() -> None:
    run = _stepped_up()
    run.param_stats["update_ratio"][:] = 0.5
    (f,) = _lr_found(run)
    assert "too high" in f.message and "stepped up ×10" in f.message
    assert isinstance(f.detail, LearningRateDetail) and f.detail.step_up is None


def test_what_is_not_a_step_up() -> None:
    run = healthy_run(n=60, lr=0.1)
    steps = run.steps.astype(float)
    run.lr = [(0.1 if s < 30 else 0.01,) for s in steps]                          # step decay: only ever down
    assert find_lr_step_up(run, TH) is None
    run.lr = [(0.1 * min(1.0, (s + 1) / 20),) for s in steps]                     # linear warm-up
    assert find_lr_step_up(run, TH) is None
    run.lr = [(0.1 * 0.5 * (1 + np.cos(np.pi * (s % 20) / 20)) + 1e-6,) for s in steps]   # warm restarts to ~0
    assert find_lr_step_up(run, TH) is None
    run.lr = [(0.1 * (1 + 24 * min(s / 18, 1.0)) / 25 if s < 18 else 0.1 * (1 - (s - 18) / 42) + 1e-6,)
              for s in steps]                                                     # one-cycle
    assert find_lr_step_up(run, TH) is None
    run.lr = [(5.0 if 30 <= s < 33 else 0.05,) for s in steps]                    # a spike: it comes back
    assert find_lr_step_up(run, TH) is None and find_lr_spike(run, TH) is not None
    # a long warm-up recorded densely at first and sparsely after: the jump between step 5 and step 100 is a
    # ramp sampled far apart, not a step
    sparse = healthy_run(n=12, lr=0.1)
    sparse.steps = np.array([0, 1, 2, 3, 4, 5, 100, 200, 300, 400, 500, 600], dtype=np.int64)
    sparse.lr = [(0.1 * min(1.0, (s + 1) / 2000),) for s in sparse.steps.tolist()]
    assert find_lr_step_up(sparse, TH) is None


# ---------------------------------------------------------------- ratios scaled to the schedule's peak

def _warmup_cosine(run: Run, peak: float, warmup: int = 10) -> np.ndarray:
    s = run.steps.astype(float)
    total = float(s[-1])
    lr = np.where(s < warmup, peak * (s + 1) / warmup,
                  peak * 0.5 * (1 + np.cos(np.pi * (s - warmup) / (total - warmup + 1))))
    run.lr = [(float(v),) for v in lr]
    return lr


def _ratios_follow_the_rate(run: Run, lr: np.ndarray, at_peak: float) -> None:
    """Update/weight ratios proportional to each step's rate, ``at_peak`` at the peak (SGD: Δw = lr·g)."""
    run.param_stats["update_ratio"][:] = (at_peak * lr / lr.max())[:, None]


def test_a_peak_too_high_is_caught_under_a_cosine_tail() -> None:
    run = healthy_run(n=60, lr=0.5)
    lr = _warmup_cosine(run, 0.5)
    _ratios_follow_the_rate(run, lr, 0.15)
    raw = np.median(run.param_stats["update_ratio"], axis=1)
    assert np.mean(raw > TH.lr_ratio_high) < TH.persistence            # the recorded ratios alone: no majority
    (f,) = _lr_found(run)
    assert "too high" in f.message and "peak rate 0.5" in f.message
    assert isinstance(f.detail, LearningRateDetail) and f.detail.peak_lr == 0.5
    fixes = diagnose(run).by_code(Code.LEARNING_RATE)[0].fixes
    assert "peak learning rate" in fixes[0].summary and "was 0.5" in fixes[0].summary
    compile(fixes[0].code, "<fix>", "exec")


def test_a_sane_warmup_and_cosine_stays_quiet() -> None:
    run = healthy_run(n=60, lr=0.05)
    lr = _warmup_cosine(run, 0.05)
    _ratios_follow_the_rate(run, lr, 2e-3)
    assert _lr_found(run) == []
    assert find_lr_spike(run, TH) is None and find_lr_step_up(run, TH) is None


def test_a_decay_to_nearly_zero_does_not_look_too_low() -> None:
    """The tail of a cosine to ~0 moves the weights very little; at the peak the same run moves them normally."""
    run = healthy_run(n=60, lr=0.05)
    s = run.steps.astype(float)
    lr = 0.05 * np.maximum(1.0 - s / 60.0, 0.0) ** 8 + 1e-9
    run.lr = [(float(v),) for v in lr]
    _ratios_follow_the_rate(run, lr, 1e-3)
    assert np.median(run.param_stats["update_ratio"]) < TH.lr_ratio_low     # the recorded ratios: "too low"
    assert _lr_found(run) == []


# ---------------------------------------------------------------- Adam-like steps against the initial scale

def _adam(lr: float, *, underfits: bool) -> Run:
    run = healthy_run(n=60, optimizer="AdamW", lr=lr, accuracy=True)
    if underfits:
        for key in ("train_acc", "val_acc"):
            s = run.metrics[key]
            set_metric(run, key, s.steps, np.minimum(s.values, 0.45))
    return run


def test_adam_steps_large_against_the_initial_scale_with_an_underfit_are_too_high() -> None:
    run = _adam(0.03, underfits=True)
    ur = run.param_stats["update_ratio"]
    assert np.median(ur) < TH.lr_ratio_high_adaptive                      # inside the band
    (f,) = _lr_found(run)
    assert isinstance(f.detail, LearningRateDetail) and f.detail.init_step is not None
    assert f.detail.init_step.scale >= TH.lr_init_step_adaptive and "underfitting" in f.message
    assert f.detail.suggested_lr is not None and f.detail.suggested_lr < 0.03
    d = diagnose(run)
    (lr,) = d.by_code(Code.LEARNING_RATE)
    (uf,) = d.by_code(Code.UNDERFITTING)
    assert Code.LEARNING_RATE in uf.caused_by and lr.is_root
    assert lr.fixes[0].kind is FixKind.LEARNING_RATE and "0.03" in lr.fixes[0].summary


def test_large_adam_steps_without_damage_or_small_steps_with_an_underfit_are_quiet() -> None:
    assert _lr_found(_adam(0.03, underfits=False)) == []               # a sane-looking run: not judged on lr alone
    small = _adam(1e-3, underfits=True)                                 # lr / std ≈ 0.01: the model, not the rate
    assert _lr_found(small) == []
    assert diagnose(small).by_code(Code.UNDERFITTING)


def test_sgd_is_not_judged_against_the_initial_scale() -> None:
    """SGD's step is lr × gradient: lr / std says nothing about it."""
    run = healthy_run(n=60, lr=0.03, accuracy=True)
    for key in ("train_acc", "val_acc"):
        s = run.metrics[key]
        set_metric(run, key, s.steps, np.minimum(s.values, 0.45))
    assert _lr_found(run) == []


def test_exploding_that_begins_at_the_peak_is_the_large_steps_doing() -> None:
    run = healthy_run(n=60, optimizer="AdamW", lr=0.1)
    init = LrInitStep(peak=0.1, peak_step=10, scale=2.0, damage=(Code.EXPLODING_GRADIENTS,))
    cause = Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", "", steps=(0, 59),
                    detail=LearningRateDetail(direction="high", init_step=init))

    def exploding(first: int) -> Finding:
        return Finding(Code.EXPLODING_GRADIENTS, Severity.WARNING, "Exploding", "", steps=(first, 59),
                       detail=ExplodingDetail(first_step=first))

    after = link([cause, exploding(30)], run, TH)
    assert after[1].caused_by == (Code.LEARNING_RATE,)
    during_warmup = link([cause, exploding(5)], run, TH)
    assert during_warmup[1].caused_by == ()
