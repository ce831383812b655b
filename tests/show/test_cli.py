"""``gradscope report``: exit codes, output formats, bad input, and no torch on the way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gradscope.judge.findings import Severity
from gradscope.show.cli import main
from gradscope.store.schema import NonFiniteRecord
from tests.logfactory import (
    corrupt_line,
    healthy_layer,
    make_header,
    overfit_metrics,
    truncate_last_line,
    write_log,
    write_tb_scalars,
)

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def strict_json(text: str) -> dict:
    def bad(c: str) -> object:
        raise AssertionError(f"non-strict JSON constant {c}")
    doc = json.loads(text, parse_constant=bad)
    assert isinstance(doc, dict)
    return doc


def assert_one_line_error(r: Result, *fragments: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert r.stdout == ""


# --- bad input (no rules needed) ---------------------------------------------------------------------------

def test_missing_dir(tmp_path: Path) -> None:
    assert_one_line_error(cli("report", tmp_path / "nope"), "no such directory")


def test_empty_dir(tmp_path: Path) -> None:
    assert_one_line_error(cli("report", tmp_path), "empty directory")


def test_dir_without_logs_or_scalars(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "sub").mkdir()
    assert_one_line_error(cli("report", tmp_path), "no gradscope log")


def test_event_files_without_user_scalars(tmp_path: Path) -> None:
    write_tb_scalars(tmp_path, {"grad_norm/fc1": [(0, 1.0)], "gradscope/loss": [(0, 1.0)]})
    assert_one_line_error(cli("report", tmp_path), "no scalars")


def test_newer_schema(tmp_path: Path) -> None:
    write_log(tmp_path, header=make_header(schema=7))
    assert_one_line_error(cli("report", tmp_path, "--format", "json"), "schema 7", "upgrade gradscope")


def test_log_without_header(tmp_path: Path) -> None:
    (tmp_path / "gradscope.rank0.jsonl").write_text('{"kind": "step", "step": 0}\n')
    assert_one_line_error(cli("report", tmp_path), "gradscope.rank0.jsonl")


def test_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert_one_line_error(cli("report", f), "not a directory")


@pytest.mark.parametrize("args", [["--ignore", "no_such_code"], ["--baseline-error", "abc"],
                                  ["--baseline-error", "1.5"], ["--threshold", "no_such_threshold=1"],
                                  ["--threshold", "missing-equals"], ["--format", "yaml"],
                                  ["--fail-on", "info"]])
def test_bad_options_exit_2(tmp_path: Path, args: list[str]) -> None:
    write_log(tmp_path, steps=3)
    r = cli("report", tmp_path, *args)
    assert_one_line_error(r, args[0])   # one line naming the option, not click's usage + hint + error


@pytest.mark.parametrize(("args", "suggestion"), [
    (["--threshold", "dead_fracton=0.8"], "did you mean 'dead_fraction'"),
    (["--ignore", "dead_reul"], "did you mean 'dead_relu'"),
    (["--format", "jsn"], "did you mean 'json'"),
    (["--fial-on", "never"], "--fail-on"),
])
def test_typo_gets_a_did_you_mean(tmp_path: Path, args: list[str], suggestion: str) -> None:
    write_log(tmp_path, steps=3)
    assert_one_line_error(cli("report", tmp_path, *args), suggestion)


def test_unknown_command_is_one_line() -> None:
    assert_one_line_error(cli("reprot", "x"), "No such command", "report")


def test_code_and_choice_spellings_are_forgiven(tmp_path: Path) -> None:
    _write_diverged(tmp_path)
    r = cli("report", tmp_path, "--format", "JSON", "--ignore", "Divergence", "--ignore", "unstable-loss")
    doc = strict_json(r.stdout)
    assert not {"divergence", "unstable_loss"} & {f["code"] for f in doc["findings"]}


@pytest.mark.parametrize("exc", [RecursionError("maximum recursion depth exceeded"), MemoryError(),
                                 OverflowError("int too large"), ValueError("boom\nsecond line"),
                                 UnicodeEncodeError("ascii", "\u2013", 0, 1, "ordinal not in range"),
                                 KeyError("layers")])
def test_internal_failure_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             exc: Exception) -> None:
    """Exit 1 means "findings present": a crash of gradscope itself must never look like one."""
    import gradscope.show.report as report_module

    def boom(*_a: object, **_k: object) -> None:
        raise exc

    write_log(tmp_path, steps=3)
    monkeypatch.delenv("GRADSCOPE_TRACEBACK", raising=False)
    monkeypatch.setattr(report_module, "report", boom)
    assert_one_line_error(cli("report", tmp_path), "internal error", type(exc).__name__)


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_failure_while_rendering_prints_no_half_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fmt: str) -> None:
    from gradscope.show import markdown, text
    from gradscope.show import report as report_module

    def boom(*_a: object, **_k: object) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.delenv("GRADSCOPE_TRACEBACK", raising=False)
    monkeypatch.setattr({"text": text, "json": report_module, "markdown": markdown}[fmt],
                        {"text": "render_text", "json": "jsonable", "markdown": "render_markdown"}[fmt], boom)
    write_log(tmp_path, steps=3)
    assert_one_line_error(cli("report", tmp_path, "--format", fmt), "RecursionError")


def test_traceback_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope.show.report as report_module

    def boom(*_a: object, **_k: object) -> None:
        raise OverflowError("kept for the bug report")

    write_log(tmp_path, steps=3)
    monkeypatch.setattr(report_module, "report", boom)
    monkeypatch.setenv("GRADSCOPE_TRACEBACK", "1")
    with pytest.raises(OverflowError, match="kept for the bug report"):
        cli("report", tmp_path)


def test_interrupt_exits_130_not_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope.show.report as report_module

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    write_log(tmp_path, steps=3)
    monkeypatch.setattr(report_module, "report", interrupted)
    r = cli("report", tmp_path)
    assert r.exit_code == 130 and "error: interrupted" in r.stderr and "Traceback" not in r.output


def test_help_lists_report_and_codes() -> None:
    r = cli("report", "--help")
    assert r.exit_code == 0
    for word in ("--fail-on", "--ignore", "--baseline-error", "--threshold", "dead_relu"):
        assert word in r.stdout
    top = cli("--help")
    assert top.exit_code == 0 and "report" in top.stdout


def test_cli_import_does_not_import_torch() -> None:
    code = "import sys, gradscope.show.cli, gradscope.show.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- end to end (needs the rules engine) -------------------------------------------------------------------



def _diverging(step: int, i: int, layer: object) -> dict[str, float | None]:
    stats = healthy_layer(step, i, layer)  # type: ignore[arg-type]
    if step >= 15:
        stats["grad_norm"] = None
        stats["nonfinite"] = 10.0
    return stats


def _write_diverged(d: Path) -> None:
    metrics = {s: {"train_loss": (2.0 - 0.05 * s) if s < 15 else None} for s in range(20)}
    write_log(d, steps=20, layer_fn=_diverging, metrics=metrics,
              nonfinite=[NonFiniteRecord(step=15, where="loss"),
                         NonFiniteRecord(step=15, where="gradient", layer="fc1", param="fc1.weight")])


def _severity_of(doc: dict) -> Severity | None:
    sev = [Severity(f["severity"]) for f in doc["findings"]]
    return max(sev, key=lambda s: s.rank) if sev else None


def test_healthy_run_text_json_markdown(tmp_path: Path) -> None:
    write_log(tmp_path, steps=30)
    text = cli("report", tmp_path)
    assert text.exit_code in (0, 1), text.output
    assert "gradscope report:" in text.stdout and "\x1b[" not in text.stdout   # plain when not a terminal
    assert text.stderr == ""
    j = cli("report", tmp_path, "--format", "json")
    doc = strict_json(j.stdout)
    assert doc["schema"] == 1 and doc["run"]["recorded_steps"] == 30 and doc["run"]["completed"] is True
    worst = _severity_of(doc)
    assert j.exit_code == (1 if worst is Severity.ERROR else 0)
    md = cli("report", tmp_path, "--format", "markdown")
    assert md.stdout.startswith("## gradscope report:") and md.exit_code == j.exit_code


def test_exit_codes_follow_fail_on(tmp_path: Path) -> None:
    _write_diverged(tmp_path)
    r = cli("report", tmp_path, "--format", "json")
    doc = strict_json(r.stdout)
    codes = {f["code"] for f in doc["findings"]}
    assert "divergence" in codes
    assert _severity_of(doc) is Severity.ERROR
    assert r.exit_code == 1
    assert cli("report", tmp_path, "--fail-on", "never").exit_code == 0
    assert cli("report", tmp_path, "--fail-on", "warning").exit_code == 1
    ignored = cli("report", tmp_path, "--format", "json", *[a for c in codes for a in ("--ignore", c)])
    assert strict_json(ignored.stdout)["findings"] == [] and ignored.exit_code == 0


def test_truncated_log_reports_intact_part_with_one_warning(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=12, close=False)
    truncate_last_line(path)
    r = cli("report", tmp_path, "--format", "json")
    assert r.exit_code in (0, 1)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "truncated" in lines[0]
    doc = strict_json(r.stdout)
    assert doc["run"]["recorded_steps"] == 11 and doc["run"]["completed"] is False
    assert any("truncated" in p for p in doc["run"]["problems"])


def test_corrupt_middle_record_warns_with_file_and_line(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=12)
    corrupt_line(path, 6)
    r = cli("report", tmp_path)
    assert r.exit_code in (0, 1)
    lines = r.stderr.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("warning: ")] and len(lines) == 1
    assert f"{path}:6: corrupt record" in lines[0]
    j = strict_json(cli("report", tmp_path, "--format", "json").stdout)
    assert j["run"]["recorded_steps"] == 11 and j["run"]["completed"] is True   # records after it were read


def test_several_runs_in_subfolders(tmp_path: Path) -> None:
    write_log(tmp_path / "a", steps=10)
    _write_diverged(tmp_path / "b")
    write_tb_scalars(tmp_path / "c" / "tb", {"loss/train": [(i, 1.0 / (i + 1)) for i in range(5)]})
    write_log(tmp_path / "d", header=make_header(schema=99))
    r = cli("report", tmp_path, "--format", "json")
    doc = strict_json(r.stdout)
    assert [e["run"]["name"] for e in doc["runs"]] == ["a", "b", "c/tb"]
    assert any("schema 99" in p for p in doc["problems"])
    assert "divergence" in {f["code"] for f in doc["runs"][1]["findings"]}
    assert r.exit_code == 1
    assert "schema 99" in r.stderr and r.stderr.startswith("warning: ")
    text = cli("report", tmp_path)
    assert text.stdout.count("gradscope report:") == 3


def test_tensorboard_only_run_gets_a_fit_verdict(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for epoch in range(30):
            w.add_scalar("Loss/train", 2.0 * 0.9 ** epoch, epoch)
            w.add_scalar("Loss/val", 1.0 + 0.004 * (epoch - 8) ** 2, epoch)
    r = cli("report", tmp_path, "--format", "json")
    doc = strict_json(r.stdout)
    assert doc["run"]["has_log"] is False
    assert doc["run"]["metrics"]["val_loss"]["source"] == "tensorboard:Loss/val"
    assert "overfitting" in {f["code"] for f in doc["findings"]}


def test_baseline_error_reaches_the_diagnosis(tmp_path: Path) -> None:
    write_log(tmp_path, steps=30, metrics=overfit_metrics(3, 10))
    doc = strict_json(cli("report", tmp_path, "--format", "json", "--baseline-error", "0.5%").stdout)
    assert doc["run"]["baseline_error"] == pytest.approx(0.005)


def test_threshold_override_is_accepted(tmp_path: Path) -> None:
    import dataclasses

    from gradscope.judge.thresholds import Thresholds

    fields = [f for f in dataclasses.fields(Thresholds) if isinstance(getattr(Thresholds(), f.name), float)]
    if not fields:
        pytest.skip("Thresholds has no float fields yet")
    name = fields[0].name
    write_log(tmp_path, steps=10)
    r = cli("report", tmp_path, "--threshold", f"{name}={getattr(Thresholds(), name)}", "--fail-on", "never")
    assert r.exit_code == 0, r.output
    bad = cli("report", tmp_path, "--threshold", f"{name}=abc")
    assert bad.exit_code == 2 and name in bad.stderr


def test_python_m_gradscope_report_without_torch(tmp_path: Path) -> None:
    _write_diverged(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "gradscope", "report", str(tmp_path), "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert "divergence" in {f["code"] for f in strict_json(proc.stdout)["findings"]}
    script = textwrap.dedent(f"""
        import sys
        from gradscope.show.cli import main
        try:
            main(["report", {str(tmp_path)!r}, "--format", "markdown"])
        except SystemExit as e:
            code = e.code
        assert 'torch' not in sys.modules, 'torch was imported'
        sys.exit(code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("## gradscope report:")


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_a_non_utf8_terminal_gets_question_marks_not_a_crash(tmp_path: Path, fmt: str) -> None:
    import os

    write_log(tmp_path, steps=10)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "gradscope", "report", str(tmp_path), "--format", fmt,
                           "--fail-on", "never"], capture_output=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    proc.stdout.decode("ascii")   # every byte is ASCII: the sparkline and dashes became "?"
    assert b"gradscope report" in proc.stdout or b'"schema": 1' in proc.stdout


def test_python_m_gradscope_bad_option_is_one_line(tmp_path: Path) -> None:
    write_log(tmp_path, steps=3)
    proc = subprocess.run([sys.executable, "-m", "gradscope", "report", str(tmp_path), "--ignore", "dead_reul"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "dead_relu" in proc.stderr
