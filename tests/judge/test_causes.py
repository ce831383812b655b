"""Findings form a graph: causes name their consequences, lead the report, and outrank them; consequences keep
their code but drop the fixes their cause already gives."""

from __future__ import annotations

import numpy as np

from gradscope.judge.causes import LINKS, link
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity, root_first_key
from gradscope.judge.rules.init import PoorInitDetail
from gradscope.judge.rules.loss import FirstStep
from gradscope.judge.rules.optim import LearningRateDetail
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import add_nonfinite, healthy_run, mlp, set_param

TH = Thresholds()
LR_FIX = Fix(FixKind.LEARNING_RATE, "lower it", 'for group in optimizer.param_groups:\n    group["lr"] = 0.01')
LR_FIX_2 = Fix(FixKind.LEARNING_RATE, "lower it more", 'for group in optimizer.param_groups:\n    group["lr"] = 0.001')
CLIP = Fix(FixKind.CLIPPING, "clip", "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")


def _lr(direction: str) -> Finding:
    return Finding(Code.LEARNING_RATE, Severity.WARNING, "lr", "m", steps=(0, 99), fixes=(LR_FIX,),
                   evidence={"direction": direction}, detail=LearningRateDetail(direction=direction))


def _div() -> Finding:
    return Finding(Code.DIVERGENCE, Severity.ERROR, "div", "m", steps=(50, 60), fixes=(LR_FIX_2, CLIP),
                   detail=FirstStep(50))


def test_a_cause_names_its_consequence_outranks_it_and_keeps_the_only_lr_fix() -> None:
    run = healthy_run()
    lr, div = link([_div(), _lr("high")], run, TH)[::-1]
    assert div.caused_by == (Code.LEARNING_RATE,) and lr.consequences == (Code.DIVERGENCE,)
    assert lr.severity is Severity.ERROR        # raised to what it explains: the worst severity is unchanged
    assert div.severity is Severity.ERROR and div.code is Code.DIVERGENCE   # still reported, still an error
    assert [fx.kind for fx in div.fixes] == [FixKind.CLIPPING]   # no second, contradicting learning rate
    assert lr.fixes == (LR_FIX,)
    assert sorted([div, lr], key=root_first_key)[0] is lr
    d = div.to_dict()
    assert d["caused_by"] == ["learning_rate"] and "consequences" not in d
    assert lr.to_dict()["consequences"] == ["divergence"]


def test_no_link_without_the_condition() -> None:
    run = healthy_run()
    out = link([_lr("low"), _div()], run, TH)           # a learning rate too low does not make a loss blow up
    assert all(f.is_root and not f.consequences for f in out)
    assert [f.severity for f in out] == [Severity.WARNING, Severity.ERROR]
    assert "caused_by" not in out[1].to_dict()            # the JSON of an unlinked finding is as before
    init = Finding(Code.POOR_INIT, Severity.WARNING, "i", "m", layers=("fc1",), detail=PoorInitDetail())
    sat = Finding(Code.SATURATION, Severity.ERROR, "s", "m", layers=("fc2",))
    assert all(f.is_root for f in link([init, sat], run, TH))   # different layers: no claim
    linked = link([init, Finding(Code.SATURATION, Severity.ERROR, "s", "m", layers=("fc1",))], run, TH)
    assert linked[1].caused_by == (Code.POOR_INIT,)


def test_info_findings_are_never_linked() -> None:
    quiet = Finding(Code.UNSTABLE_LOSS, Severity.INFO, "u", "m", steps=(3, 4))
    out = link([_lr("high"), quiet], healthy_run(), TH)
    assert out[1].is_root and out[0].severity is Severity.WARNING


def test_links_form_no_cycle() -> None:
    graph = {c: {li.effect for li in LINKS if li.cause is c} for c in Code}

    def reaches(a: Code, b: Code, seen: frozenset[Code] = frozenset()) -> bool:
        return any(n is b or (n not in seen and reaches(n, b, seen | {n})) for n in graph[a])

    assert not [c for c in Code if reaches(c, c)]
    assert all(li.why for li in LINKS)


def test_diagnose_leads_with_the_root_cause() -> None:
    """A learning rate far too high and a loss that turned NaN: the report leads with the learning rate."""
    run = healthy_run(mlp((20, 64, 64, 10)), n=60)
    for p in ("fc1.weight", "fc2.weight", "fc3.weight"):
        set_param(run, "update_ratio", p, 0.5 * np.ones(run.steps.size))
    add_nonfinite(run, 50, "loss")
    d = diagnose(run)
    assert d.findings[0].code is Code.LEARNING_RATE and d.findings[0].is_root
    div = d.by_code(Code.DIVERGENCE)[0]
    assert div.caused_by == (Code.LEARNING_RATE,) and div.severity is Severity.ERROR
    assert d.worst is Severity.ERROR
    assert FixKind.LEARNING_RATE not in {fx.kind for fx in div.fixes}
    assert FixKind.LEARNING_RATE in {fx.kind for fx in d.findings[0].fixes}


def test_one_learning_rate_in_a_report() -> None:
    """A too-high learning rate and exploding gradients that are not its consequence: both would lower the
    learning rate, to different values; the exploding finding now gives the learning_rate finding's value."""
    exploding = Finding(Code.EXPLODING_GRADIENTS, Severity.ERROR, "e", "m", steps=(2, 9), fixes=(CLIP, LR_FIX_2))
    lr, exp = link([_lr("high"), exploding], healthy_run(), TH)
    assert exp.is_root                                          # no causal claim between these two
    lr_codes = {fx.code for f in (lr, exp) for fx in f.fixes if fx.kind is FixKind.LEARNING_RATE}
    assert lr_codes == {LR_FIX.code}
    assert [fx.kind for fx in exp.fixes] == [FixKind.CLIPPING, FixKind.LEARNING_RATE]
    low = link([_lr("low"), exploding], healthy_run(), TH)[1]  # too low: nothing to agree on, left alone
    assert low.fixes == exploding.fixes


def test_a_layer_outside_the_optimizer_explains_vanishing_gradients_measured_against_it() -> None:
    """The demo's not-in-optimizer run: the head's gradient is never zeroed and piles up, so the vanishing test
    (which compares the first layer with the last) fires; the head left out of the optimizer is the cause."""
    run = healthy_run()
    stale = Finding(Code.PARAM_NOT_UPDATED, Severity.WARNING, "p", "m", layers=("fc3",))
    van = Finding(Code.VANISHING_GRADIENTS, Severity.WARNING, "v", "m", layers=("fc1",),
                  evidence={"first_layer": "fc1", "last_layer": "fc3"})
    out = link([van, stale], run, TH)
    assert out[0].caused_by == (Code.PARAM_NOT_UPDATED,) and out[1].consequences == (Code.VANISHING_GRADIENTS,)
    other = Finding(Code.VANISHING_GRADIENTS, Severity.WARNING, "v", "m", layers=("fc1",),
                    evidence={"first_layer": "fc1", "last_layer": "fc2"})
    assert all(f.is_root for f in link([other, stale], run, TH))   # measured against a layer it updates
