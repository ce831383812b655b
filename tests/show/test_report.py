"""Report rendering (text, Markdown, JSON) from hand-built diagnoses, against golden files.

Regenerate the golden files after an intended change with ``GRADSCOPE_OVERWRITE_GOLDEN=1 pytest tests/``
and review the diff.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from gradscope.errors import GradscopeWarning, LogError
from gradscope.judge.diagnose import Diagnosis
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.show.report import Report, fmt_num, fmt_pct, jsonable, layer_rows, report, sparkline
from gradscope.store.load import load_run, load_runs
from gradscope.store.run import Run
from gradscope.store.schema import LayerInfo, NonFiniteRecord
from tests.logfactory import corrupt_line, healthy_layer, overfit_metrics, write_log, write_tb_scalars

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRADSCOPE_OVERWRITE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with GRADSCOPE_OVERWRITE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs (GRADSCOPE_OVERWRITE_GOLDEN=1 to accept)"


def strict_json(text: str) -> object:
    def bad(c: str) -> object:
        raise AssertionError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=bad)


def dying_fc2(step: int, i: int, layer: LayerInfo) -> dict[str, float | None]:
    """fc2's units die from step 10 on; its gradient fades."""
    stats = healthy_layer(step, i, layer)
    if layer.name == "fc2" and step >= 10:
        stats["dead"] = 60.0
        stats["grad_norm"] = 1e-4
    if layer.name == "fc3":
        stats["saturated"] = 1.0
    return stats


def mlp_run(tmp_path: Path, name: str = "mlp") -> Run:
    d = tmp_path / name
    write_log(d, steps=40, layer_fn=dying_fc2, metrics=overfit_metrics(4, 10),
              nonfinite=[NonFiniteRecord(step=37, where="gradient", layer="fc1", param="fc1.weight")])
    run = load_run(d, name=name)
    run.path = Path("runs") / name   # a fixed path for the golden files
    return run


DEAD = Finding(
    code=Code.DEAD_RELU, severity=Severity.WARNING, title="Dead ReLU units",
    message="fc2: 94% of ReLU units never fired on steps 10–39 (threshold 90%)", layers=("fc2",),
    steps=(10, 39), evidence={"dead_frac": 0.94, "ratio": math.nan, "per_step": np.array([0.9, np.inf])},
    confidence=0.9,
    fixes=(Fix(FixKind.INIT, "He initialization for fc2",
               'nn.init.kaiming_normal_(model.fc2.weight, nonlinearity="relu")'),
           Fix(FixKind.ACTIVATION, "A leaky activation after fc2 keeps a gradient for negative inputs",
               "nn.LeakyReLU(0.01)")),
)
DIVERGED = Finding(
    code=Code.DIVERGENCE, severity=Severity.ERROR, title="Non-finite gradients",
    message="fc1.weight: the gradient held NaN/Inf first at step 37", layers=("fc1",), steps=(37, 37),
    evidence={"first_step": np.int64(37)}, confidence=1.0,
    fixes=(Fix(FixKind.CLIPPING, "Clip the total gradient norm at the 99th percentile seen (2.41)",
               "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=2.41)"),),
)
INFO = Finding(code=Code.LEARNING_RATE, severity=Severity.INFO, title="Small updates",
               message="update/weight ratio 1.0e-03 is within the usual band", steps=(0, 39), confidence=0.5)
NOT_EVALUATED = (NotEvaluated(Code.UNDERFITTING, "no training accuracy or error was logged"),)


def mlp_diagnosis(run: Run, findings: tuple[Finding, ...] = (INFO, DEAD, DIVERGED)) -> Diagnosis:
    return Diagnosis(run=run, findings=findings, not_evaluated=NOT_EVALUATED, baseline_error=0.005,
                     notes=("gradient clipping is active",))


def test_text_golden(tmp_path: Path) -> None:
    run = mlp_run(tmp_path)
    rep = Report([mlp_diagnosis(run)],
                 problems=["gradscope: runs/mlp/gradscope.rank0.jsonl:7: corrupt record (bad); skipped"])
    text = str(rep)
    # Errors before warnings before info, whatever the order given.
    assert text.index("divergence") < text.index("dead_relu") < text.index("learning_rate")
    assert "runs/mlp/gradscope.rank0.jsonl:7" in text
    assert "\x1b[" not in text
    check_golden("report_mlp.txt", text)


def test_markdown_golden(tmp_path: Path) -> None:
    rep = Report([mlp_diagnosis(mlp_run(tmp_path))])
    md = rep.to_markdown()
    assert "```python\n  torch.nn.utils.clip_grad_norm_" in md
    check_golden("report_mlp.md", md)


def test_two_runs_text_golden(tmp_path: Path) -> None:
    tb = tmp_path / "tb_only"
    write_tb_scalars(tb, {"Loss/train": [(i, 1.0 / (i + 1)) for i in range(6)],
                          "Loss/val": [(i, 0.6 + 0.05 * (i - 2) ** 2) for i in range(6)]})
    tb_run = load_run(tb, name="tb_only")
    tb_run.path = Path("runs/tb_only")
    overfit = Finding(Code.OVERFITTING, Severity.WARNING, "Overfitting",
                      "val_loss rose 40% from its minimum at step 2 while train_loss kept falling",
                      steps=(2, 5), fixes=(Fix(FixKind.EARLY_STOPPING, "Stop at step 2", ""),))
    rep = Report([mlp_diagnosis(mlp_run(tmp_path), (DEAD,)), Diagnosis(tb_run, (overfit,))],
                 problems=["runs/broken: log schema 99 is newer than this gradscope understands "
                           "(run skipped)"])
    text = str(rep)
    assert text.count("gradscope report:") == 2
    assert "Layers" in text.split("gradscope report: tb_only")[0]
    assert "Layers" not in text.split("gradscope report: tb_only")[1]   # no log → no layer table
    check_golden("report_two_runs.txt", text)
    assert rep.max_severity() is Severity.WARNING


def test_colour_when_asked(tmp_path: Path) -> None:
    rep = Report([mlp_diagnosis(mlp_run(tmp_path))])
    coloured = rep.render_text(color=True)
    assert "\x1b[" in coloured
    assert "\x1b[" not in rep.render_text()


def test_json_shape_single_run(tmp_path: Path) -> None:
    rep = Report([mlp_diagnosis(mlp_run(tmp_path))], problems=["something odd (run skipped)"])
    doc = strict_json(rep.to_json())
    assert isinstance(doc, dict)
    assert list(doc) == ["schema", "run", "findings"]
    assert doc["schema"] == 1
    run = doc["run"]
    for key in ("name", "path", "model", "steps", "recorded_steps", "completed", "ranks", "layers",
                "not_evaluated", "problems", "metrics", "notes", "baseline_error"):
        assert key in run, key
    assert run["model"] == "MLP" and run["steps"] == 40 and run["recorded_steps"] == 40
    assert run["completed"] is True and run["ranks"] == 1
    assert run["problems"] == ["something odd (run skipped)"]
    assert run["not_evaluated"] == [{"code": "underfitting",
                                     "reason": "no training accuracy or error was logged"}]
    fc2 = next(la for la in run["layers"] if la["name"] == "fc2")
    assert fc2["dead_pct"] == pytest.approx(100 * 60 / 64)
    assert fc2["saturation_pct"] is None
    assert [f["code"] for f in doc["findings"]] == ["divergence", "dead_relu", "learning_rate"]
    dead = doc["findings"][1]
    assert set(dead) == {"code", "severity", "title", "message", "layers", "steps", "evidence", "confidence",
                         "fixes"}
    assert dead["evidence"] == {"dead_frac": 0.94, "ratio": None, "per_step": [0.9, None]}   # NaN/Inf → null
    assert dead["steps"] == [10, 39]
    assert dead["fixes"][0] == {"kind": "init", "summary": "He initialization for fc2",
                                "code": 'nn.init.kaiming_normal_(model.fc2.weight, nonlinearity="relu")'}
    assert doc["findings"][0]["evidence"] == {"first_step": 37}


def test_json_shape_several_runs(tmp_path: Path) -> None:
    a, b = mlp_run(tmp_path, "a"), mlp_run(tmp_path, "b")
    rep = Report([mlp_diagnosis(a), Diagnosis(b)], problems=["runs/c: unreadable (run skipped)"])
    doc = strict_json(rep.to_json(indent=None))
    assert isinstance(doc, dict)
    assert list(doc) == ["schema", "runs", "problems"]
    assert [r["run"]["name"] for r in doc["runs"]] == ["a", "b"]
    assert doc["runs"][1]["findings"] == []
    assert doc["problems"] == ["runs/c: unreadable (run skipped)"]


def test_problems_are_attributed_to_their_run(tmp_path: Path) -> None:
    a, b = mlp_run(tmp_path, "a"), mlp_run(tmp_path, "a/b")
    rep = Report([Diagnosis(a), Diagnosis(b)],
                 problems=["gradscope: runs/a/b/gradscope.rank0.jsonl:3: corrupt record (x); skipped",
                           "gradscope: runs/a/events.out.tfevents.1.host: truncated event record #4",
                           "elsewhere"])
    assert rep.run_problems(0) == ("runs/a/events.out.tfevents.1.host: truncated event record #4",)
    assert rep.run_problems(1) == ("runs/a/b/gradscope.rank0.jsonl:3: corrupt record (x); skipped",)
    assert rep.problems[0] == "elsewhere"


def test_max_severity() -> None:
    run = Run(name="r", path=Path("r"), header=None)
    assert Report([Diagnosis(run)]).max_severity() is None
    assert Report([Diagnosis(run, (INFO,)), Diagnosis(run, (DEAD,))]).max_severity() is Severity.WARNING
    assert Report([Diagnosis(run, (DEAD, DIVERGED))]).max_severity() is Severity.ERROR
    assert [f.code for f in Report([Diagnosis(run, (INFO, DEAD)), Diagnosis(run, (DIVERGED,))]).findings] == [
        Code.DIVERGENCE, Code.DEAD_RELU, Code.LEARNING_RATE]


def test_sparkline() -> None:
    assert sparkline(np.array([1.0, 10.0, 100.0])) == "▁▅█"    # log scale: equal steps per decade
    assert sparkline(np.array([2.0] * 5)) == "▅▅▅▅▅"
    assert sparkline(np.array([1.0, np.nan, 0.0, 100.0])) == "▁··█"
    assert sparkline(np.array([])) == ""
    line = sparkline(np.logspace(0, 3, 1000))
    assert len(line) == 16 and line[0] == "▁" and line[-1] == "█"
    assert list(line) == sorted(line)


def test_layer_rows_use_last_finite_values(tmp_path: Path) -> None:
    rows = {r.name: r for r in layer_rows(mlp_run(tmp_path))}
    assert rows["fc2"].grad_norm == pytest.approx(1e-4)
    assert rows["fc2"].dead_pct == pytest.approx(93.75)
    assert rows["fc1"].act_std == pytest.approx(1.0)
    assert rows["fc3"].saturation_pct == pytest.approx(100 / 3)
    assert rows["fc3"].dead_pct is None
    assert rows["fc2"].grad_norm_trend.endswith("▁") and rows["fc2"].grad_norm_trend.startswith("█")


def test_formatting_helpers() -> None:
    assert fmt_num(None) == fmt_num(math.nan) == fmt_num(math.inf) == "–"
    assert fmt_num(0.1234) == "0.123" and fmt_num(12345.0) == "1.23e+04" and fmt_num(1e-5) == "1.00e-05"
    assert fmt_num(0.0) == "0"
    assert fmt_pct(93.75) == "93.8%" and fmt_pct(None) == "–"
    assert jsonable({"a": (np.float32(1.5), np.bool_(True), Severity.ERROR, Path("x")), 1: -math.inf}) == {
        "a": [1.5, True, "error", "x"], "1": None}


# --- load_runs: what counts as readable (no rules needed) ---------------------------------------------------

def test_load_runs_skips_unreadable_runs_but_keeps_the_others(tmp_path: Path) -> None:
    from tests.logfactory import make_header

    write_log(tmp_path / "good", steps=3)
    write_log(tmp_path / "newer", steps=3, header=make_header(schema=99))
    runs, problems = load_runs(tmp_path)
    assert [r.name for r in runs] == ["good"]
    assert len(problems) == 1 and "schema 99" in problems[0] and "run skipped" in problems[0]


def test_load_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no such directory"):
        load_runs(tmp_path / "missing")
    with pytest.raises(LogError, match="empty directory"):
        load_runs(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LogError, match="no gradscope log"):
        load_runs(tmp_path)
    write_tb_scalars(tmp_path / "tb", {"grad_norm/fc1": [(0, 1.0)]})   # only gradscope's own tags
    with pytest.raises(LogError, match="no scalars"):
        load_runs(tmp_path)


def test_load_runs_warns_about_damage(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=5)
    corrupt_line(path, 4)
    with pytest.warns(GradscopeWarning, match=":4: corrupt record"):
        runs, _ = load_runs(tmp_path)
    assert runs[0].problems and len(runs[0].steps) == 4


# --- the one call, end to end (needs the rules engine) ------------------------------------------------------



def test_report_end_to_end(tmp_path: Path) -> None:
    write_log(tmp_path / "run", steps=40, metrics=overfit_metrics(4, 10))
    rep = report(tmp_path)
    assert len(rep.diagnoses) == 1 and rep.runs[0].name == "run"
    doc = strict_json(rep.to_json())
    assert isinstance(doc, dict) and doc["run"]["recorded_steps"] == 40
    assert "gradscope report: run" in str(rep)


def test_report_collects_damage_warnings(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=10)
    corrupt_line(path, 5)
    with pytest.warns(GradscopeWarning, match=":5: corrupt record"):
        rep = report(tmp_path)
    assert any(":5: corrupt record" in p for p in rep.run_problems(0))
    assert rep.runs[0].steps.tolist() == [0, 1, *range(3, 10)]
