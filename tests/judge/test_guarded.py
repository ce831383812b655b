"""A rule (or its fixes) that raises is reported as "rule failed", and the rest of the report stays intact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, Fix
from gradscope.judge.rules import RULES
from gradscope.judge.rules._common import Context
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load
from gradscope.store.run import Run
from tests.logfactory import healthy_layer, overfit_metrics, write_log


def _dead_fc2(step: int, i: int, layer: object) -> dict[str, float | None]:
    stats = healthy_layer(step, i, layer)  # type: ignore[arg-type]
    if i == 1:
        stats["dead"] = 0.95 * float(stats["units"] or 1)
    return stats


def _log(tmp_path: Path) -> Path:
    """A real log (written with the real writer) on which dead_relu and overfitting both fire."""
    write_log(tmp_path, steps=120, layer_fn=_dead_fc2, metrics=overfit_metrics())
    return tmp_path


def _raise(*_args: object) -> list[Finding]:
    raise ZeroDivisionError("boom\nsecond line")


def _break(monkeypatch: pytest.MonkeyPatch, code: Code, **change: object) -> None:
    monkeypatch.setitem(RULES, code, dataclasses.replace(RULES[code], **change))


def test_the_log_fires_both_codes_untouched(tmp_path: Path) -> None:
    d = diagnose(load(_log(tmp_path), warn=False)[0])
    assert {"dead_relu", "overfitting"} <= d.codes()
    assert not [n for n in d.not_evaluated if n.reason.startswith("rule failed")]


def test_a_raising_rule_is_not_evaluated_and_the_others_still_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = load(_log(tmp_path), warn=False)[0]
    _break(monkeypatch, Code.DEAD_RELU, func=_raise)
    d = diagnose(run)
    reasons = {n.code: n.reason for n in d.not_evaluated}
    assert reasons[Code.DEAD_RELU] == "rule failed: ZeroDivisionError: boom second line"
    assert "dead_relu" not in d.codes()
    over = d.by_code(Code.OVERFITTING)
    assert over and over[0].fixes, "the other rules and their fixes still run"


def test_raising_fixes_keep_the_finding_without_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load(_log(tmp_path), warn=False)[0]

    def bad_fixes(f: Finding, r: Run, th: Thresholds) -> list[Fix | None]:
        raise KeyError("best_step")

    _break(monkeypatch, Code.OVERFITTING, fixes=bad_fixes)
    d = diagnose(run)
    over = d.by_code(Code.OVERFITTING)
    assert over and over[0].fixes == ()
    reason = {n.code: n.reason for n in d.not_evaluated}[Code.OVERFITTING]
    assert reason.startswith("rule failed: fixes: KeyError: 'best_step'")
    assert d.by_code(Code.DEAD_RELU)[0].fixes, "the other findings keep their fixes"


def test_a_raising_need_check_is_guarded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load(_log(tmp_path), warn=False)[0]
    need = dataclasses.replace(RULES[Code.SATURATION].needs[0], missing=_raise)
    _break(monkeypatch, Code.SATURATION, needs=(need,))
    reasons = {n.code: n.reason for n in diagnose(run).not_evaluated}
    assert reasons[Code.SATURATION].startswith("rule failed: ZeroDivisionError")


def test_a_long_message_is_shortened_to_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def long(*_args: object) -> list[Finding]:
        raise ValueError("x" * 5000)

    _break(monkeypatch, Code.DEAD_RELU, func=long)
    reason = {n.code: n.reason for n in diagnose(load(_log(tmp_path), warn=False)[0]).not_evaluated}[Code.DEAD_RELU]
    assert reason.startswith("rule failed: ValueError: xxx") and len(reason) < 400 and "\n" not in reason


def test_gradscope_report_json_survives_a_raising_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradscope.show.cli import main

    logdir = _log(tmp_path)
    _break(monkeypatch, Code.DEAD_RELU, func=_raise)
    res = CliRunner().invoke(main, ["report", str(logdir), "--format", "json"], catch_exceptions=False)
    assert "Traceback" not in res.output
    text = res.output
    doc = json.loads(text[text.index("{"):])
    flat = json.dumps(doc)
    assert "rule failed: ZeroDivisionError: boom" in flat
    assert '"overfitting"' in flat


def test_direct_call_checks_needs() -> None:
    """Calling a registry entry checks its needs first (what diagnose does), so direct callers get the same
    "not evaluated" instead of a crash inside the rule."""
    from tests.rulecases import metrics_only_run

    out = RULES[Code.DEAD_RELU](metrics_only_run({}), Thresholds(), Context())
    assert not isinstance(out, list) and "no gradscope log" in out.reason


def test_a_failure_in_linking_causes_keeps_the_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope.judge.diagnose as dmod

    run = load(_log(tmp_path), warn=False)[0]
    monkeypatch.setattr(dmod, "link", _raise)
    d = diagnose(run)
    assert {"dead_relu", "overfitting"} <= d.codes()
    assert any(n.startswith("linking causes to consequences failed: ZeroDivisionError") for n in d.notes)
