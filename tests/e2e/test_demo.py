"""``gradscope demo`` and the problem definitions it shares with examples/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gradscope.demo import DEFAULT_PROBLEM, PROBLEMS, run_problem
from gradscope.judge.findings import Severity
from gradscope.show.cli import main


def test_default_demo_is_readmes_first_command_and_shows_a_finding(tmp_path: Path) -> None:
    assert PROBLEMS[DEFAULT_PROBLEM].expected           # the default run is broken on purpose
    result = CliRunner().invoke(main, ["demo", "--logdir", str(tmp_path / "run"), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    for code in PROBLEMS[DEFAULT_PROBLEM].expected:
        assert code.value in out
    assert f"tensorboard --logdir {tmp_path / 'run'}" in out
    assert f"gradscope report {tmp_path / 'run'}" in out
    assert "epoch 3/3" in out                                   # the progress bar ran to the end
    assert (tmp_path / "run" / "gradscope.rank0.jsonl").is_file()
    assert any(p.name.startswith("events.out.tfevents.") for p in (tmp_path / "run").iterdir())


def test_demo_lists_problems_and_rejects_unknown_ones() -> None:
    runner = CliRunner()
    helptext = runner.invoke(main, ["demo", "--help"])
    assert helptext.exit_code == 0
    for name in PROBLEMS:
        assert name in helptext.output
    assert "demo" in runner.invoke(main, ["--help"]).output
    bad = runner.invoke(main, ["demo", "--problem", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_healthy_problem_raises_no_warning(tmp_path: Path) -> None:
    r = run_problem("healthy", tmp_path / "healthy", small=True)
    assert [f for f in r.findings if f.severity.rank >= Severity.WARNING.rank] == []
    assert r.val_acc > 0.9 and r.warnings == []


def test_runs_are_reproducible_and_leave_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = run_problem("overfitting", tmp_path / "a", fixed=True, epochs=2)
    b = run_problem("overfitting", tmp_path / "b", fixed=True, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert (a.val_loss, a.train_acc) == (b.val_loss, b.train_acc)
    with pytest.raises(ValueError, match="unknown problem"):
        run_problem("nope", tmp_path / "c")


@pytest.mark.parametrize("name", ["detached", "not_in_optimizer"])
def test_loop_bug_problems_are_found_and_their_twins_are_clean(name: str, tmp_path: Path) -> None:
    """Training-loop bugs (issue 12): the broken run names the bug with a training_loop fix; the fixed twin
    (the same model and data, the loop corrected) does not."""
    problem = PROBLEMS[name]
    broken = run_problem(name, tmp_path / "broken", small=True)
    fixed = run_problem(name, tmp_path / "fixed", fixed=True, small=True)
    for code in problem.expected:
        f = broken.finding(code)
        assert f is not None and f.severity.rank >= Severity.WARNING.rank, broken.codes
        assert any(fx.kind.value == "training_loop" and fx.code for fx in f.fixes)
        assert fixed.finding(code) is None
    assert [f for f in fixed.findings if f.severity.rank >= Severity.WARNING.rank] == []
