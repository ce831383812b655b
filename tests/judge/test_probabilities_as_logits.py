"""``probabilities_as_logits`` (issue 12): the model-output keys of ``loop`` records as the reader checks them, and
the rule on hand-built logs: softmax outputs with a loss stuck at the cross-entropy floor (warning), the same
outputs with a loss below the floor (``NLLLoss(log p)``: silent), without a loss (info, conditional), logits and
one-column outputs (silent or not evaluated), and a log without the keys (an older writer: not evaluated)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gradscope.judge.confidence import confidence, fraction_margin, mean, support
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import probabilities_as_logits
from gradscope.judge.rules._common import Context
from gradscope.judge.rules.loop import probs_floor
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load_run
from gradscope.store.run import Run
from gradscope.store.schema import LoopRecord
from tests.judge.snippets import check_fix
from tests.logfactory import write_log

TH = Thresholds()
STEPS = 20
FLOOR10 = math.log(10 + math.e - 1) - 1   # 1.4610


def _loops(lo: float = 0.01, sum_lo: float = 1.0 - 1e-7, sum_hi: float = 1.0 + 1e-7, cols: int | None = 10,
           probs_steps: Sequence[int] = range(STEPS)) -> list[dict[str, Any]]:
    """One ``loop`` record per step, each after a step record, with the output keys as the watch writes them
    (``cols`` None: not measured); steps outside ``probs_steps`` get logits (negative entries)."""
    out = []
    for s in range(STEPS):
        rec = LoopRecord(step=s, from_step=s, forwards=1).to_dict()
        if cols is not None:
            p = s in probs_steps
            rec.update(output_min=lo if p else -3.2, output_sum_lo=sum_lo if p else -4.0,
                       output_sum_hi=sum_hi if p else 5.0, output_cols=cols)
        out.append(rec)
    return out


def _losses(values: Sequence[float]) -> dict[int, dict[str, float | None]]:
    return {i * 2: {"train_loss": v} for i, v in enumerate(values)}


def _run(tmp_path: Path, records: Sequence[dict[str, Any]], losses: Sequence[float] = ()) -> Run:
    write_log(tmp_path, steps=STEPS, metrics=_losses(losses), extra_records=records)
    return load_run(tmp_path, warn=False)


def _only(result: list[Finding] | NotEvaluated) -> Finding:
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


STUCK = [2.28, 2.05, 1.8, 1.66, 1.58, 1.53, 1.51, 1.50]      # CE on softmax outputs: stops above 1.46
NLL = [2.1, 1.4, 0.72, 0.38, 0.24, 0.18, 0.13, 0.11]         # NLL(log p): falls to 0


def test_the_floor_is_cross_entropy_of_softmax_of_a_one_hot_row() -> None:
    import numpy as np
    for c in (2, 3, 10, 100):
        z = np.zeros(c)
        z[0] = 1.0
        assert probs_floor(c) == pytest.approx(-(1.0 - math.log(np.exp(z).sum())))
    assert probs_floor(10) == pytest.approx(FLOOR10)


def test_the_reader_collects_the_output_keys(tmp_path: Path) -> None:
    recs = _loops()
    recs[3] = LoopRecord(step=3, from_step=3, forwards=1).to_dict()   # not measured (a record of no output)
    lp = _run(tmp_path, recs).loop
    assert lp.output_cols.tolist()[:4] == [10, 10, 10, 0]
    assert math.isnan(lp.output_min[3]) and lp.output_min[0] == 0.01 and lp.output_sum_hi[0] == 1.0 + 1e-7


@pytest.mark.parametrize(("change", "why"), [
    ({"output_cols": 1}, "output_cols"), ({"output_cols": 2.0}, "output_cols"), ({"output_min": "0"}, "output_min"),
    ({"output_sum_lo": 2.0, "output_sum_hi": 1.0}, "output_sum_lo"),
])
def test_bad_output_keys_skip_the_record_with_a_problem(tmp_path: Path, change: dict[str, Any], why: str) -> None:
    recs = _loops()
    recs[0].update(change)
    run = _run(tmp_path, recs)
    assert run.loop.records == STEPS - 1
    assert any(why in p for p in run.problems), run.problems


def test_a_log_without_output_keys_is_not_evaluated(tmp_path: Path) -> None:
    run = _run(tmp_path, _loops(cols=None), STUCK)
    ne = diagnose(run).not_evaluated
    assert any(n.code is Code.PROBABILITIES_AS_LOGITS and "measured on 0" in n.reason for n in ne)


def test_softmax_outputs_with_a_loss_stuck_at_the_floor_warn(tmp_path: Path) -> None:
    run = _run(tmp_path, _loops(), STUCK)
    f = _only(probabilities_as_logits(run, TH, Context()))
    assert f.code is Code.PROBABILITIES_AS_LOGITS and f.severity is Severity.WARNING
    progress = (math.log(10) - 1.50) / (math.log(10) - FLOOR10)   # of the way from chance to the floor
    assert f.confidence == pytest.approx(confidence(mean(support(STEPS, STEPS, TH.confidence_support_level),
                                                         fraction_margin(progress, TH.probs_floor_near)),
                                                    TH.confidence_floor))
    assert f.evidence["classes"] == 10 and f.evidence["floor"] == pytest.approx(FLOOR10)
    assert f.evidence["loss_min"] == 1.50 and "1.46" in f.message
    [g] = [g for g in diagnose(run).findings if g.code is Code.PROBABILITIES_AS_LOGITS]
    assert [fx.kind for fx in g.fixes] == [FixKind.ACTIVATION, FixKind.TRAINING_LOOP]
    for fx in g.fixes:
        assert check_fix(fx, run) == []


def test_softmax_outputs_with_a_loss_below_the_floor_stay_silent(tmp_path: Path) -> None:
    """NLLLoss(torch.log(p)) on the same outputs: the loss goes where cross-entropy on probabilities cannot."""
    assert probabilities_as_logits(_run(tmp_path, _loops(), NLL), TH, Context()) == []


def test_without_a_loss_or_near_chance_the_finding_is_conditional_info(tmp_path: Path) -> None:
    f = _only(probabilities_as_logits(_run(tmp_path / "a", _loops()), TH, Context()))
    assert f.severity is Severity.INFO and "If these probabilities go into nn.CrossEntropyLoss" in f.message
    assert f.confidence == pytest.approx(TH.confidence_floor * support(STEPS, STEPS, TH.confidence_support_level))
    near_chance = [2.31, 2.30, 2.29, 2.28, 2.27]   # learned nothing yet: no evidence of the floor
    g = _only(probabilities_as_logits(_run(tmp_path / "b", _loops(), near_chance), TH, Context()))
    assert g.severity is Severity.INFO


def test_logits_and_rows_not_summing_to_one_stay_silent(tmp_path: Path) -> None:
    assert probabilities_as_logits(_run(tmp_path / "a", _loops(probs_steps=()), STUCK), TH, Context()) == []
    # Non-negative but not normalized (ReLU outputs, multi-label sigmoids): rows off 1 by more than the tolerance.
    assert probabilities_as_logits(_run(tmp_path / "b", _loops(sum_lo=0.5, sum_hi=3.0), STUCK), TH, Context()) == []
    # Rows summing to 1 with a negative entry: not probabilities.
    assert probabilities_as_logits(_run(tmp_path / "c", _loops(lo=-0.2), STUCK), TH, Context()) == []


def test_it_needs_most_measured_steps_to_be_probabilities(tmp_path: Path) -> None:
    few = range(0, STEPS, 2)   # half the steps
    assert probabilities_as_logits(_run(tmp_path / "a", _loops(probs_steps=few), STUCK), TH, Context()) == []
    most = range(1, STEPS)     # 19 of 20 = 95 % ≥ 90 %
    assert _only(probabilities_as_logits(_run(tmp_path / "b", _loops(probs_steps=most), STUCK), TH,
                                         Context())).severity is Severity.WARNING


def test_half_precision_rounding_of_the_row_sums_is_within_tolerance(tmp_path: Path) -> None:
    run = _run(tmp_path, _loops(sum_lo=0.996, sum_hi=1.004), STUCK)
    assert _only(probabilities_as_logits(run, TH, Context())).severity is Severity.WARNING


def test_two_classes_use_their_own_floor(tmp_path: Path) -> None:
    floor2 = probs_floor(2)   # 0.313
    stuck = [0.69, 0.55, 0.45, 0.38, 0.34, 0.33, 0.325, 0.32]
    f = _only(probabilities_as_logits(_run(tmp_path / "a", _loops(cols=2), stuck), TH, Context()))
    assert f.severity is Severity.WARNING and f.evidence["floor"] == pytest.approx(floor2)
    below = [0.69, 0.4, 0.2, 0.1, 0.05]
    assert probabilities_as_logits(_run(tmp_path / "b", _loops(cols=2), below), TH, Context()) == []
