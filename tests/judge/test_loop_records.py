"""The loop's own habits (issue 12): ``loop`` records as the reader checks them (``Run.loop``), and the rules that
judge them, ``grad_not_zeroed``, ``eval_mode_training`` and ``train_mode_eval``, on hand-built logs.

Logs are written with the real ``LogWriter`` and records (tests/logfactory.py); only the ``loop`` records and the
header's ``extra.mode_modules`` are chosen per test. Each rule is checked on its bug, on its look-alike that must
stay silent (or at info), below its threshold, and without the data it needs ("not evaluated"); each fix snippet
is compiled and its ``model`` paths resolved against the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gradscope.judge.confidence import confidence, fraction_margin, mean, support
from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, FixKind, NotEvaluated, Severity
from gradscope.judge.rules import eval_mode_training, grad_not_zeroed, train_mode_eval
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load_run
from gradscope.store.run import Run
from gradscope.store.schema import LoopRecord
from gradscope.store.validate import MAX_LOOP_STEPS
from tests.judge.snippets import check_fix
from tests.logfactory import MLP_LAYERS, make_header, write_log

TH = Thresholds()


def _conf(hits: int, total: int, threshold: float) -> float:
    """The loop-habit rules' documented confidence: support over the checks and margin past the fraction."""
    return confidence(mean(support(hits, total, TH.confidence_support_level),
                           fraction_margin(hits / total, threshold)), TH.confidence_floor)


STEPS = 20


def _loops(stale: Sequence[int] = (), evals: Sequence[int] = (), *, checks: bool = True) -> list[dict[str, Any]]:
    """One ``loop`` record per step 0..STEPS-1, as the watch writes them with ``every=1`` and ``optimizer=``:
    every backward after step 0 is checked."""
    return [LoopRecord(step=s, from_step=s, forwards=1, eval_forwards=int(s in evals),
                       eval_steps=(s,) if s in evals else (), grad_checks=int(checks and s > 0),
                       stale_grad_steps=(s,) if s in stale else ()).to_dict() for s in range(STEPS)]


def _run(tmp_path: Path, records: Sequence[dict[str, Any]], *, modes: dict[str, int] | None = None,
         layers: Sequence[tuple[str, str, int, int, str | None]] = MLP_LAYERS, frozen: Sequence[str] = ()) -> Run:
    header = make_header(layers)
    extra = {} if modes is None else {"mode_modules": modes}
    params = tuple(p for p in header.params if p.layer not in frozen)
    header = dataclasses.replace(header, extra=extra, params=params)
    write_log(tmp_path, steps=STEPS, header=header, extra_records=records)
    return load_run(tmp_path, warn=False)


def _only(result: list[Finding] | NotEvaluated) -> Finding:
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


# -------------------------------------------------------------------------------------------------- reader

def test_the_reader_collects_loop_records(tmp_path: Path) -> None:
    recs = [{"kind": "loop", "step": 4, "from_step": 0, "forwards": 9, "eval_forwards": 2, "eval_steps": [1, 3],
             "grad_checks": 4, "stale_grad_steps": [2, 3, 4], "from_the_future": [1, 2]},   # unknown key: ignored
            {"kind": "loop", "step": 9, "from_step": 5, "forwards": 5}]                       # lists may be absent
    run = _run(tmp_path, recs)
    assert not run.problems
    lp = run.loop
    assert lp.records == 2 and lp.n_steps == 10
    assert lp.span.tolist() == [[0, 4], [5, 9]] and lp.forwards.tolist() == [9, 5]
    assert lp.eval_forwards.tolist() == [2, 0] and lp.grad_checks.tolist() == [4, 0]
    assert lp.eval_steps.tolist() == [1, 3] and lp.stale_grad_steps.tolist() == [2, 3, 4]


def test_a_log_without_loop_records_has_an_empty_loop(tmp_path: Path) -> None:
    lp = _run(tmp_path, []).loop
    assert lp.records == 0 and lp.n_steps == 0 and lp.eval_steps.size == 0 and lp.stale_grad_steps.size == 0


@pytest.mark.parametrize(("change", "why"), [
    ({"step": -1}, "step"), ({"step": True}, "step"), ({"step": 2**60}, "step"), ({"from_step": 7}, "from_step"),
    ({"forwards": "3"}, "forwards"), ({"eval_forwards": 6}, "eval_forwards"), ({"grad_checks": -1}, "grad_checks"),
    ({"eval_steps": [3, 3]}, "eval_steps[1]"), ({"eval_steps": [4, 3]}, "eval_steps[1]"),
    ({"eval_steps": [0]}, "eval_steps[0]"), ({"eval_steps": [6]}, "eval_steps[0]"),
    ({"eval_steps": [2, 3, 4]}, "eval_steps: 3 steps"), ({"eval_steps": "3"}, "eval_steps"),
    ({"stale_grad_steps": [3.0]}, "stale_grad_steps[0]"), ({"stale_grad_steps": [2, 3, 4]}, "stale_grad_steps: 3"),
])
def test_an_invalid_loop_record_is_skipped_with_a_problem(tmp_path: Path, change: dict[str, Any], why: str) -> None:
    good = {"kind": "loop", "step": 5, "from_step": 1, "forwards": 5, "eval_forwards": 2, "eval_steps": [2, 4],
            "grad_checks": 2, "stale_grad_steps": [3, 5]}
    run = _run(tmp_path, [{**good, **change}, {**good, "step": 9, "from_step": 6, "eval_steps": [],
                                                "stale_grad_steps": []}])
    assert run.loop.records == 1 and run.loop.span.tolist() == [[6, 9]]   # the next record is still read
    assert len(run.problems) == 1 and "invalid record" in run.problems[0] and why in run.problems[0], run.problems


def test_step_lists_are_bounded(tmp_path: Path) -> None:
    n = MAX_LOOP_STEPS + 1
    rec = {"kind": "loop", "step": n, "from_step": 0, "forwards": n, "eval_forwards": n, "eval_steps": list(range(n))}
    run = _run(tmp_path, [rec])
    assert run.loop.records == 0 and f"at most {MAX_LOOP_STEPS}" in run.problems[0]


def test_an_overlapping_loop_record_is_skipped(tmp_path: Path) -> None:
    a = {"kind": "loop", "step": 5, "from_step": 0, "forwards": 6}
    run = _run(tmp_path, [a, {**a, "step": 7, "from_step": 5}, {**a, "step": 9, "from_step": 6}])
    assert run.loop.span.tolist() == [[0, 5], [6, 9]]
    assert len(run.problems) == 1 and "overlaps" in run.problems[0]


# ----------------------------------------------------------------------------------------- grad_not_zeroed

def test_grad_not_zeroed_fires_when_most_checks_find_stale_gradients(tmp_path: Path) -> None:
    run = _run(tmp_path, _loops(stale=range(1, STEPS)))
    f = _only(grad_not_zeroed(run, TH, Context()))
    assert f.code is Code.GRAD_NOT_ZEROED and f.severity is Severity.WARNING
    assert f.steps == (1, STEPS - 1) and f.confidence == pytest.approx(_conf(19, 19, TH.grad_not_zeroed_fraction))
    assert 0.95 < f.confidence < 1.0   # 19 of 19: strong, not certain
    assert f.evidence["stale_steps"] == STEPS - 1 and f.evidence["checked"] == STEPS - 1
    assert "19 of 19 checked backwards" in f.message
    d = diagnose(run)
    [g] = [g for g in d.findings if g.code is Code.GRAD_NOT_ZEROED]
    assert {fx.kind for fx in g.fixes} == {FixKind.TRAINING_LOOP} and len(g.fixes) == 2
    assert "optimizer.zero_grad(" in g.fixes[0].code and "optimizer.step()" in g.fixes[1].code
    for fx in g.fixes:
        assert check_fix(fx, run) == []


def test_grad_not_zeroed_is_silent_for_a_zeroing_loop_and_below_its_fraction(tmp_path: Path) -> None:
    assert grad_not_zeroed(_run(tmp_path / "a", _loops()), TH, Context()) == []
    # 9 of 19: under half, not a habit
    assert grad_not_zeroed(_run(tmp_path / "b", _loops(stale=range(1, 10))), TH, Context()) == []
    assert _only(grad_not_zeroed(_run(tmp_path / "c", _loops(stale=range(1, 11))), TH, Context())).confidence \
        == pytest.approx(_conf(10, 19, TH.grad_not_zeroed_fraction))


def test_grad_not_zeroed_is_not_evaluated_without_records_or_checks(tmp_path: Path) -> None:
    ne = grad_not_zeroed(_run(tmp_path / "a", []), TH, Context())
    assert isinstance(ne, NotEvaluated) and "no loop records" in ne.reason
    ne = grad_not_zeroed(_run(tmp_path / "b", _loops(checks=False)), TH, Context())
    assert isinstance(ne, NotEvaluated) and "optimizer=" in ne.reason
    few = [r for r in _loops(stale=(1, 2)) if r["step"] < 3]
    ne = grad_not_zeroed(_run(tmp_path / "c", few), TH, Context())
    assert isinstance(ne, NotEvaluated) and "2 gradient check(s)" in ne.reason


# -------------------------------------------------------------------------------------- eval_mode_training

def test_eval_mode_training_fires_on_a_dropout_model_trained_in_eval_mode(tmp_path: Path) -> None:
    run = _run(tmp_path, _loops(evals=range(3, STEPS)), modes={"Dropout": 2})
    f = _only(eval_mode_training(run, TH, Context()))
    assert f.code is Code.EVAL_MODE_TRAINING and f.severity is Severity.WARNING
    assert f.steps == (3, STEPS - 1) and f.evidence["eval_steps"] == 17 and f.evidence["steps"] == STEPS
    assert f.evidence["mode_modules"] == {"Dropout": 2} and "2 Dropout" in f.message
    [g] = [g for g in diagnose(run).findings if g.code is Code.EVAL_MODE_TRAINING]
    assert "model.train()" in g.fixes[0].code and len(g.fixes) == 2
    for fx in g.fixes:
        assert fx.kind is FixKind.TRAINING_LOOP and check_fix(fx, run) == []


def test_eval_mode_training_is_silent_below_its_fraction_and_without_mode_modules(tmp_path: Path) -> None:
    assert eval_mode_training(_run(tmp_path / "a", _loops(evals=range(11, STEPS)), modes={"Dropout": 1}), TH,
                              Context()) == []
    assert eval_mode_training(_run(tmp_path / "b", _loops(), modes={"BatchNorm2d": 2}), TH, Context()) == []
    # eval mode changes nothing in a model without dropout or batch norm: nothing to say
    assert eval_mode_training(_run(tmp_path / "c", _loops(evals=range(STEPS)), modes={}), TH, Context()) == []


def test_frozen_batchnorm_fine_tuning_in_eval_mode_is_only_info(tmp_path: Path) -> None:
    layers = (*MLP_LAYERS[:1], ("bn", "BatchNorm1d", 64, 64, None), *MLP_LAYERS[1:])
    run = _run(tmp_path / "frozen", _loops(evals=range(STEPS)), modes={"BatchNorm1d": 1}, layers=layers,
               frozen=("bn",))
    f = _only(eval_mode_training(run, TH, Context()))
    assert f.severity is Severity.INFO and f.evidence["frozen_batchnorm"] is True and "on purpose" in f.message
    # the same model with batch norm trainable, or with a dropout too, is the bug
    run = _run(tmp_path / "trained", _loops(evals=range(STEPS)), modes={"BatchNorm1d": 1}, layers=layers)
    assert _only(eval_mode_training(run, TH, Context())).severity is Severity.WARNING
    run = _run(tmp_path / "dropout", _loops(evals=range(STEPS)), modes={"BatchNorm1d": 1, "Dropout": 1},
               layers=layers, frozen=("bn",))
    assert _only(eval_mode_training(run, TH, Context())).severity is Severity.WARNING


def test_an_older_header_falls_back_to_batchnorm_layers(tmp_path: Path) -> None:
    layers = (*MLP_LAYERS[:1], ("bn", "BatchNorm1d", 64, 64, None), *MLP_LAYERS[1:])
    f = _only(eval_mode_training(_run(tmp_path / "bn", _loops(evals=range(STEPS)), layers=layers), TH, Context()))
    assert f.evidence["mode_modules"] == {"BatchNorm1d": 1}
    assert eval_mode_training(_run(tmp_path / "mlp", _loops(evals=range(STEPS))), TH, Context()) == []


def test_eval_mode_training_is_not_evaluated_without_loop_records(tmp_path: Path) -> None:
    ne = eval_mode_training(_run(tmp_path / "a", [], modes={"Dropout": 1}), TH, Context())
    assert isinstance(ne, NotEvaluated) and "no loop records" in ne.reason
    ne = eval_mode_training(_run(tmp_path / "b", _loops(evals=(0, 1))[:2], modes={"Dropout": 1}), TH, Context())
    assert isinstance(ne, NotEvaluated) and "cover 2 step(s)" in ne.reason


def test_a_record_of_no_step_carries_the_passes_after_the_last_step(tmp_path: Path) -> None:
    recs = [{"kind": "loop", "step": 9, "from_step": 0, "forwards": 10, "train_nograd_forwards": 2},
            {"kind": "loop", "step": 9, "from_step": 10, "train_nograd_forwards": 1, "train_nograd_repeats": 1}]
    lp = _run(tmp_path / "ok", recs).loop
    assert lp.records == 2 and lp.n_steps == 10
    assert lp.train_nograd_forwards.tolist() == [2, 1] and lp.train_nograd_repeats.tolist() == [0, 1]
    bad = [{**recs[1], "train_nograd_repeats": 2}, {**recs[1], "eval_steps": [10]}, {**recs[1], "from_step": 11}]
    for i, rec in enumerate(bad):
        run = _run(tmp_path / str(i), [recs[0], rec])
        assert run.loop.records == 1 and "invalid record" in run.problems[0], run.problems


# ----------------------------------------------------------------------------------------- train_mode_eval

def _nograd(passes: int, repeats: int = 0) -> list[dict[str, Any]]:
    """Loop records of a zeroing, train-mode loop whose evaluations ran ``passes`` no-grad forwards in train mode,
    spread over the records, the last of them after the last step (a record of no step)."""
    recs = _loops()
    per, left = divmod(passes, 4)
    reps = [repeats // 4] * 4
    reps[-1] += repeats - sum(reps)
    for k, s in enumerate((4, 9, 14)):
        recs[s]["train_nograd_forwards"], recs[s]["train_nograd_repeats"] = per, reps[k]
    tail = LoopRecord(step=STEPS - 1, from_step=STEPS, train_nograd_forwards=per + left,
                      train_nograd_repeats=reps[3]).to_dict()
    return [*recs, tail]


def test_train_mode_eval_fires_on_validation_in_train_mode(tmp_path: Path) -> None:
    run = _run(tmp_path, _nograd(8), modes={"BatchNorm2d": 2})
    f = _only(train_mode_eval(run, TH, Context()))
    assert f.code is Code.TRAIN_MODE_EVAL and f.severity is Severity.WARNING
    assert f.confidence == pytest.approx(_conf(8, 8, 1.0 - TH.train_mode_eval_repeat_fraction))
    assert f.evidence["passes"] == 8 and f.evidence["repeated_inputs"] == 0 and f.steps == (4, STEPS - 1)
    assert "8 forward pass(es)" in f.message and "2 BatchNorm2d" in f.message
    [g] = [g for g in diagnose(run).findings if g.code is Code.TRAIN_MODE_EVAL]
    assert len(g.fixes) == 2 and "model.train(False)" in g.fixes[0].code
    for fx in g.fixes:
        assert fx.kind is FixKind.TRAINING_LOOP and check_fix(fx, run) == []


def test_monte_carlo_dropout_is_only_info(tmp_path: Path) -> None:
    run = _run(tmp_path, _nograd(40, repeats=36), modes={"Dropout": 2})   # 4 batches × 10 samples
    f = _only(train_mode_eval(run, TH, Context()))
    assert f.severity is Severity.INFO and "Monte Carlo" in f.message
    # below the floor: 36 of 40 passes repeated their input (sampling on purpose, most likely)
    assert f.confidence == pytest.approx(TH.confidence_floor * (1 - support(36, 40, TH.confidence_support_level)))
    # under half repeated: a validation loop that sometimes feeds one batch twice is still the bug
    run = _run(tmp_path / "b", _nograd(40, repeats=12), modes={"Dropout": 2})
    assert _only(train_mode_eval(run, TH, Context())).severity is Severity.WARNING


def test_train_mode_eval_is_silent_below_its_count_without_mode_modules_or_records(tmp_path: Path) -> None:
    assert train_mode_eval(_run(tmp_path / "a", _nograd(2), modes={"Dropout": 1}), TH, Context()) == []
    assert train_mode_eval(_run(tmp_path / "b", _nograd(8), modes={}), TH, Context()) == []
    assert train_mode_eval(_run(tmp_path / "c", _loops(), modes={"Dropout": 1}), TH, Context()) == []
    ne = train_mode_eval(_run(tmp_path / "d", [], modes={"Dropout": 1}), TH, Context())
    assert isinstance(ne, NotEvaluated) and "no loop records" in ne.reason
