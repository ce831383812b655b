"""Training one demo problem with gradscope attached, and its result."""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.demo.problems import PROBLEMS
from gradscope.errors import GradscopeWarning
from gradscope.judge.findings import Code, Finding

if TYPE_CHECKING:
    from rich.console import Console

    from gradscope.show.report import Report

SMALL_ENV = "GRADSCOPE_EXAMPLE_SMALL"
"""Set to 1 to run the examples (and the demo) on fewer epochs: what the tests use."""


@dataclass
class Result:
    """What one run produced: its report, log folder and final numbers."""

    problem: str
    fixed: bool
    logdir: Path
    report: Report
    epochs: int                  # epochs actually run (early stopping may end sooner)
    train_acc: float
    val_acc: float
    val_loss: float
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.report.findings

    @property
    def codes(self) -> set[str]:
        return {f.code.value for f in self.findings}

    def finding(self, code: Code | str) -> Finding | None:
        c = Code(code)
        return next((f for f in self.findings if f.code is c), None)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = F.cross_entropy(out, y).item()
        acc = (out.argmax(1) == y).float().mean().item()
    model.train(was)
    return loss, acc


def is_small() -> bool:
    return os.environ.get(SMALL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_problem(name: str, logdir: str | os.PathLike[str], *, fixed: bool = False, epochs: int | None = None,
                small: bool | None = None, seed: int = 0, console: Console | None = None,
                progress: bool = False) -> Result:
    """Train problem ``name`` (broken, or ``fixed``) with gradscope attached, logging to ``logdir``
    (replaced), and return its report. ``progress`` shows a rich progress bar on ``console``.

    NaN/Inf warnings from gradscope are collected into ``Result.warnings`` instead of raised: a broken run
    is the point of the demo, and the report already says where the first NaN appeared.
    """
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")
    # Module construction and dropout draw from the global RNG: seeding a fork of it makes runs
    # reproducible and leaves the caller's RNG state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _run_problem(name, logdir, fixed=fixed, epochs=epochs, small=small, seed=seed, console=console,
                            progress=progress)


def _run_problem(name: str, logdir: str | os.PathLike[str], *, fixed: bool, epochs: int | None,
                 small: bool | None, seed: int, console: Console | None, progress: bool) -> Result:
    problem = PROBLEMS[name]
    small = is_small() if small is None else small
    gen = torch.Generator().manual_seed(seed)
    setup = problem.build(fixed, small, gen)
    n_epochs = setup.epochs if epochs is None else int(epochs)
    logdir = Path(logdir)
    if logdir.exists():
        shutil.rmtree(logdir)
    model, opt = setup.model, setup.optimizer
    (xt, yt), (xv, yv) = setup.train, setup.val
    n = xt.shape[0]
    steps_per_epoch = math.ceil(n / setup.batch_size)
    t0 = time.perf_counter()
    best, since_best = math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    train_acc = val_acc = val_loss = math.nan
    ran = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradscopeWarning)
        bar, task = _progress(console, progress, f"{name}{' (fixed)' if fixed else ''}", n_epochs * steps_per_epoch)
        try:
            with gradscope.watch(model, logdir) as scope:
                for epoch in range(n_epochs):
                    perm = torch.randperm(n, generator=gen)
                    total, count = 0.0, 0
                    for i in range(0, n, setup.batch_size):
                        idx = perm[i:i + setup.batch_size]
                        opt.zero_grad()
                        loss = F.cross_entropy(model(xt[idx]), yt[idx])
                        loss.backward()
                        if setup.clip is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
                        opt.step()
                        total += loss.item() * len(idx)
                        count += len(idx)
                        if bar is not None:
                            bar.advance(task)
                    ran = epoch + 1
                    train_loss = total / max(count, 1)
                    _, train_acc = _evaluate(model, xt, yt)
                    val_loss, val_acc = _evaluate(model, xv, yv)
                    metrics = {"train_loss": train_loss, "val_loss": val_loss}
                    if setup.log_accuracy:
                        metrics |= {"train_acc": train_acc, "val_acc": val_acc}
                    scope.log(step=None, **metrics)   # step=None: the watch's own step counter
                    if bar is not None:
                        bar.update(task, description=f"{name}{' (fixed)' if fixed else ''}  epoch {ran}/{n_epochs}"
                                   f"  loss {train_loss:.3g}  val acc {val_acc:.0%}")
                    if setup.patience is not None:
                        if val_loss < best:
                            best, since_best = val_loss, 0
                            best_state = {k: v.clone() for k, v in model.state_dict().items()}
                        else:
                            since_best += 1
                            if since_best >= setup.patience:
                                break
                if best_state is not None:
                    # Early stopping: keep the best checkpoint, and log what it scores (the model shipped).
                    model.load_state_dict(best_state)
                    train_loss, train_acc = _evaluate(model, xt, yt)
                    val_loss, val_acc = _evaluate(model, xv, yv)
                    scope.log(step=None, train_loss=train_loss, val_loss=val_loss,
                              **({"train_acc": train_acc, "val_acc": val_acc} if setup.log_accuracy else {}))
        finally:
            if bar is not None:
                bar.stop()
    messages = [str(w.message) for w in caught if issubclass(w.category, GradscopeWarning)]
    for w in caught:   # anything that is not gradscope's own goes on to the caller
        if not issubclass(w.category, GradscopeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    rep = _report(logdir)
    return Result(problem=name, fixed=fixed, logdir=logdir, report=rep, epochs=ran, train_acc=train_acc,
                  val_acc=val_acc, val_loss=val_loss, seconds=time.perf_counter() - t0, warnings=messages)


def _report(logdir: Path) -> Report:
    from gradscope.show.report import report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)   # problems with the log are in the report itself
        return report(logdir)


def _progress(console: Console | None, show: bool, label: str, total: int) -> tuple[Any, Any]:
    if not show:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("steps"), TimeElapsedColumn(), console=console, transient=False)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task
