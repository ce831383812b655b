"""``gradscope demo`` (the click command), the broken-vs-fixed comparison and the examples' entry point."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from gradscope.demo.problems import DEFAULT_PROBLEM, PROBLEMS
from gradscope.demo.training import SMALL_ENV, Result, run_problem
from gradscope.judge.findings import Finding, Fix, FixKind

if TYPE_CHECKING:
    from rich.console import Console

def recommended_fix(finding: Finding, kinds: tuple[FixKind, ...] = ()) -> Fix | None:
    """The first of gradscope's fixes for ``finding`` whose kind is among ``kinds`` (else its first fix)."""
    for f in finding.fixes:
        if f.kind in kinds:
            return f
    return finding.fixes[0] if finding.fixes else None


def compare(name: str, logdir: str | os.PathLike[str] | None = None, *, small: bool | None = None,
            console: Console | None = None) -> tuple[Result, Result]:
    """What each example does: train the broken run, print each expected finding with the fix gradscope
    recommends, train the fixed run (that fix applied) and print whether the finding is gone.

    Logs go to ``logdir/broken`` and ``logdir/fixed`` (a new temporary folder when None)."""
    from rich.console import Console

    con = console or Console(highlight=False)
    p = PROBLEMS[name]
    root = Path(logdir) if logdir is not None else Path(tempfile.mkdtemp(prefix=f"gradscope-{name}-"))
    con.rule(f"[bold]{name}[/bold]: {p.title}")
    broken = run_problem(name, root / "broken", small=small, console=con)
    con.print(f"broken: train acc {broken.train_acc:.1%}, val acc {broken.val_acc:.1%}, val loss "
              f"{broken.val_loss:.3g} ({broken.epochs} epochs, {broken.seconds:.1f} s)")
    for code in p.expected:
        f = broken.finding(code)
        if f is None:
            con.print(f"[bold red]expected finding {code.value} not reported[/bold red]")
            continue
        con.print(f"[bold]{f.severity.value.upper()} {f.code.value}[/bold]: {f.message}")
        fix = recommended_fix(f, p.fix_kinds)
        if fix is not None:
            con.print(f"  gradscope recommends: {fix.summary}")
            if fix.code:
                con.print("    " + fix.code.replace("\n", "\n    "), style="cyan", markup=False)
    others = sorted(broken.codes - {c.value for c in p.expected})
    if others:
        con.print(f"  (also reported: {', '.join(others)})", style="dim")
    con.print(f"[bold]fixed[/bold]: {p.fix}")
    fixed = run_problem(name, root / "fixed", fixed=True, small=small, console=con)
    con.print(f"fixed:  train acc {fixed.train_acc:.1%}, val acc {fixed.val_acc:.1%}, val loss "
              f"{fixed.val_loss:.3g} ({fixed.epochs} epochs, {fixed.seconds:.1f} s)")
    for code in p.expected:
        gone = fixed.finding(code) is None
        con.print(f"  {code.value}: " + ("[green]gone[/green]" if gone else "[red]still reported[/red]"))
    left = sorted(fixed.codes)
    con.print("  findings of the fixed run: " + (", ".join(left) if left else "none"))
    con.print(f"logs: {root}  (gradscope report {root / 'fixed'}; tensorboard --logdir {root})", style="dim",
              soft_wrap=True)
    return broken, fixed


def example_main(name: str, argv: list[str] | None = None) -> tuple[Result, Result]:
    """Command line of the scripts in examples/: ``[--small] [--logdir DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(description=f"gradscope example: {PROBLEMS[name].title}")
    ap.add_argument("--small", action="store_true", help=f"fewer epochs (also: {SMALL_ENV}=1)")
    ap.add_argument("--logdir", default=None, help="where to write the two runs (default: a temporary folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)   # tiny models: a second thread costs more in synchronization than it saves
    return compare(name, args.logdir, small=True if args.small else None)


@click.command("demo")
@click.option("--problem", type=click.Choice(list(PROBLEMS)), default=DEFAULT_PROBLEM, show_default=True,
              help="Which training run to break (healthy: none).")
@click.option("--logdir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Where the run log and TensorBoard files go (default: a new temporary folder).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs to train (default: the problem's).")
@click.option("--fixed", is_flag=True, help="Train the fixed version instead (the finding should disappear).")
def demo(problem: str, logdir: str | None, epochs: int | None, fixed: bool) -> None:
    """Train a small, deliberately broken model with gradscope attached and show its report.

    Problems: healthy, vanishing, exploding, dead_relu, saturation, overfitting, underfitting. The data is
    generated (two spirals); nothing is downloaded. Exit code 0: a demo is not a CI gate.
    """
    from rich.console import Console

    console = Console(highlight=False)
    torch.set_num_threads(1)   # tiny models: threads cost more in synchronization than they save
    p = PROBLEMS[problem]
    folder = Path(logdir) if logdir else Path(tempfile.mkdtemp(prefix=f"gradscope-demo-{problem}-"))
    console.print(f"[bold]gradscope demo[/bold]: {problem}{' (fixed)' if fixed else ''} — "
                  f"{p.fix if fixed else p.title}")
    console.print(f"log: {folder}", style="dim", soft_wrap=True)
    result = run_problem(problem, folder, fixed=fixed, epochs=epochs, console=console, progress=True)
    console.print()
    console.print(result.report)
    if result.warnings:
        console.print("warnings during training:", style="bold yellow")
        for m in dict.fromkeys(result.warnings):
            console.print(f"  - {m.removeprefix('gradscope: ')}")
    console.print(f"train accuracy {result.train_acc:.1%}, validation accuracy {result.val_acc:.1%} after "
                  f"{result.epochs} epochs ({result.seconds:.1f} s)")
    if not fixed and p.expected:
        console.print(f"Next: the fixed version ({p.fix}):\n  [bold]gradscope demo --problem {problem} --fixed[/bold]",
                      soft_wrap=True)
    console.print(f"Open the panels: [bold]tensorboard --logdir {folder}[/bold] (custom scalars: 'gradscope')",
                  soft_wrap=True)
    console.print(f"Report again:    [bold]gradscope report {folder}[/bold]", soft_wrap=True)
