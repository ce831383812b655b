"""``gradscope demo``: small training problems, broken the classic ways, trained with gradscope attached.

Each problem is a real (tiny) training run on data generated here — two interleaved spirals, a task a
linear model cannot solve and a small MLP solves in seconds — broken the way practitioners break it:

=============  ==========================================================  =====================================
problem        the broken run                                              the fixed run
=============  ==========================================================  =====================================
healthy        ReLU MLP, He init, Adam, standardized inputs                (already fine)
vanishing      12-layer sigmoid MLP, PyTorch's default init, SGD           ReLU + He (Kaiming) init
exploding      8-layer ReLU MLP initialized with std 1 (He: 0.18), SGD     He init + ``clip_grad_norm_``
dead_relu      ReLU MLP whose biases start at -3: most units never fire     LeakyReLU, zero biases
saturation     tanh MLP on raw, unstandardized inputs (values ~ 500)       standardized inputs
overfitting    2×512 MLP, 128 points, 20 features (2 useful), 10% wrong    weight decay + dropout + early stopping
underfitting   a linear model (no hidden layer)                            a 3×64 ReLU MLP
=============  ==========================================================  =====================================

The examples in ``examples/`` import these definitions (``run_problem(name, fixed=...)``), so the demo and
the examples cannot drift apart. Everything uses a private ``torch.Generator``: runs are reproducible and
the global RNG is left alone.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning
from gradscope.judge.findings import Code, Finding, Fix, FixKind

if TYPE_CHECKING:
    from rich.console import Console

    from gradscope.show.report import Report

DEFAULT_PROBLEM = "vanishing"
"""``gradscope demo`` with no option: the classic deep-sigmoid network. It trains in a few seconds, its
gradients shrink by orders of magnitude from the output to the input, and the report names the layers and
the fix (ReLU with He init), a real finding rather than a clean bill of health."""

SMALL_ENV = "GRADSCOPE_EXAMPLE_SMALL"
"""Set to 1 to run the examples (and the demo) on fewer epochs: what the tests use."""


# ------------------------------------------------------------------------------------------------- data

def two_spirals(n: int, *, noise: float = 0.15, turns: float = 1.5, gen: torch.Generator) -> tuple[
        torch.Tensor, torch.Tensor]:
    """``n`` points of two interleaved spirals in 2-D (class 0 and 1, half each), standardized-scale inputs
    (each coordinate within about ±1.3). Not linearly separable; a 2-hidden-layer MLP reaches ~99%."""
    half = n // 2
    t = torch.sqrt(torch.rand(half, generator=gen)) * turns * 2 * math.pi + 0.5   # denser near the centre
    r = t / (turns * 2 * math.pi + 0.5)
    arm = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    x = torch.cat([arm, -arm]) * 1.2
    x = x + noise * torch.randn(x.shape, generator=gen) * 0.5
    y = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    perm = torch.randperm(2 * half, generator=gen)
    return x[perm], y[perm]


def flip_labels(y: torch.Tensor, fraction: float, *, gen: torch.Generator) -> torch.Tensor:
    """Label noise: flip a ``fraction`` of binary labels (what a small, noisy dataset looks like)."""
    flip = torch.rand(y.shape, generator=gen) < fraction
    return torch.where(flip, 1 - y, y)


def noisy_features(n_train: int, n_val: int, *, features: int = 20, label_noise: float = 0.1,
                   gen: torch.Generator) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Gaussian inputs with ``features`` standard-normal features of which two decide the class
    (``x0 + x1 > 0``), and ``label_noise`` of the training labels flipped: little data, many irrelevant
    features, some wrong labels — what a large network memorizes instead of learning the rule."""
    x = torch.randn(n_train + n_val, features, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    yt = flip_labels(y[:n_train], label_noise, gen=gen)
    return (x[:n_train], yt), (x[n_train:], y[n_train:])


def raw_units(x: torch.Tensor) -> torch.Tensor:
    """The same inputs as a sensor would report them: offset 500, scale 150 (think raw pixel sums or
    prices) — the inputs nobody standardized."""
    return x * 150.0 + 500.0


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-feature standardization with the training set's mean and std (applied to every split)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return tuple((t - mean) / std for t in (train, *others))


# ----------------------------------------------------------------------------------------------- models

def mlp(widths: list[int], act: Callable[[], nn.Module], *, dropout: float = 0.0, n_in: int = 2,
        n_out: int = 2) -> nn.Sequential:
    """Linear → act (→ dropout) for each hidden width, then a Linear head."""
    layers: list[nn.Module] = []
    d = n_in
    for w in widths:
        layers += [nn.Linear(d, w), act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = w
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def init_linear(model: nn.Module, *, weight: Callable[[torch.Tensor], Any], bias: float = 0.0) -> None:
    """Apply ``weight`` to every Linear weight (under ``no_grad``) and fill the biases with ``bias``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                weight(m.weight)
                if m.bias is not None:
                    m.bias.fill_(bias)


#: The nonlinearity names ``nn.init.kaiming_normal_`` accepts that make sense after a Linear layer.
Nonlinearity = Literal["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


def he_init(gen: torch.Generator, nonlinearity: Nonlinearity = "relu") -> Callable[[torch.Tensor], Any]:
    return lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=gen)


def normal_init(gen: torch.Generator, std: float) -> Callable[[torch.Tensor], Any]:
    return lambda w: nn.init.normal_(w, 0.0, std, generator=gen)


# ------------------------------------------------------------------------------------------- the setups

@dataclass
class Setup:
    """One concrete training run: model, optimizer, data and the training-loop options."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    epochs: int
    batch_size: int = 64
    clip: float | None = None          # clip_grad_norm_ max_norm
    patience: int | None = None        # early stopping: epochs without a better validation loss, then the
    #                                    best checkpoint is restored and evaluated (a last metrics point)
    log_accuracy: bool = True          # log train_acc/val_acc (else losses only)


@dataclass(frozen=True)
class Problem:
    """A classic training problem: how to build the broken and the fixed run, and what gradscope should say."""

    name: str
    title: str                         # the broken run, one line
    fix: str                           # what the fixed run changes, one line
    expected: tuple[Code, ...]         # codes the broken run shows (empty: healthy)
    fix_kinds: tuple[FixKind, ...]     # kinds of gradscope's fixes the fixed run applies
    build: Callable[[bool, bool, torch.Generator], Setup] = field(repr=False)   # (fixed, small, gen)


def _spiral_data(gen: torch.Generator, n_train: int, n_val: int, *, noise: float = 0.15) -> tuple[
        tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y = two_spirals(n_train + n_val, noise=noise, gen=gen)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _epochs(full: int, small: bool, small_epochs: int) -> int:
    return small_epochs if small else full


def _healthy(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = mlp([64, 64, 64], nn.ReLU)
    init_linear(model, weight=he_init(gen))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(20, small, 12))


def _vanishing(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model = mlp([32] * 12, nn.ReLU)
        init_linear(model, weight=he_init(gen))
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    else:
        # PyTorch's default Linear init (uniform, std 1/sqrt(3·fan_in)) under 12 sigmoids: each layer
        # multiplies the backward signal by at most 0.25 × ~0.6.
        model = mlp([32] * 12, nn.Sigmoid)
        init_linear(model, weight=lambda w: nn.init.uniform_(w, -1 / math.sqrt(w.shape[1]),
                                                              1 / math.sqrt(w.shape[1]), generator=gen))
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return Setup(model, opt, train, val, _epochs(12, small, 8))


def _exploding(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    model = mlp([64] * 8, nn.ReLU)
    if fixed:
        init_linear(model, weight=he_init(gen))
        return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), train, val,
                     _epochs(12, small, 10), clip=1.0)
    # std 1.0 where He init would use sqrt(2/64) = 0.18: every layer multiplies the signal by ~5.7.
    init_linear(model, weight=normal_init(gen, 1.0))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), train, val,
                 _epochs(12, small, 10))


def _dead_relu(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model = mlp([64, 64, 64], lambda: nn.LeakyReLU(0.1))
        init_linear(model, weight=he_init(gen, "leaky_relu"))
    else:
        # Biases at -3 with unit-scale weights: w·x + b < 0 for every input, so the ReLUs output 0 and pass
        # no gradient; nothing can revive them.
        model = mlp([64, 64, 64], nn.ReLU)
        init_linear(model, weight=he_init(gen), bias=-3.0)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(12, small, 8))


def _saturation(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    (xt, yt), (xv, yv) = _spiral_data(gen, 2000, 500)
    xt, xv = raw_units(xt), raw_units(xv)
    if fixed:
        xt, xv = standardize(xt, xv)
    model = mlp([64, 64, 64], nn.Tanh)
    init_linear(model, weight=lambda w: nn.init.xavier_normal_(w, gain=5 / 3, generator=gen))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), (xt, yt), (xv, yv), _epochs(12, small, 8))


def _overfitting(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    (xt, yt), val = noisy_features(128, 1000, gen=gen)
    # Losses only: the verdict comes from the validation-loss curve (its rise after the minimum). With
    # 10% flipped labels even the best model's train/validation accuracy gap is a few points.
    epochs = _epochs(100, small, 40)
    if fixed:
        model = mlp([512, 512], nn.ReLU, dropout=0.5, n_in=xt.shape[1])
        init_linear(model, weight=he_init(gen))
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        return Setup(model, opt, (xt, yt), val, epochs, batch_size=32, patience=10, log_accuracy=False)
    model = mlp([512, 512], nn.ReLU, n_in=xt.shape[1])
    init_linear(model, weight=he_init(gen))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Setup(model, opt, (xt, yt), val, epochs, batch_size=32, log_accuracy=False)


def _underfitting(fixed: bool, small: bool, gen: torch.Generator) -> Setup:
    train, val = _spiral_data(gen, 2000, 500)
    if fixed:
        model: nn.Module = mlp([64, 64, 64], nn.ReLU)
        init_linear(model, weight=he_init(gen))
    else:
        model = mlp([], nn.ReLU)   # logistic regression on a task that is not linearly separable
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), train, val, _epochs(20, small, 12))


PROBLEMS: dict[str, Problem] = {p.name: p for p in (
    Problem("healthy", "a 3×64 ReLU MLP with He init, Adam and standardized inputs", "nothing to fix", (),
            (), _healthy),
    Problem("vanishing", "a 12-layer sigmoid MLP with PyTorch's default init",
            "ReLU activations with He (Kaiming) initialization", (Code.VANISHING_GRADIENTS,),
            (FixKind.ACTIVATION, FixKind.INIT), _vanishing),
    Problem("exploding", "an 8-layer ReLU MLP initialized with std 1.0 (He init would use 0.18)",
            "He initialization and clip_grad_norm_(max_norm=1.0)", (Code.EXPLODING_GRADIENTS,),
            (FixKind.INIT, FixKind.CLIPPING), _exploding),
    Problem("dead_relu", "a ReLU MLP whose biases start at -3",
            "LeakyReLU(0.1) with zero-initialized biases", (Code.DEAD_RELU,),
            (FixKind.ACTIVATION, FixKind.INIT), _dead_relu),
    Problem("saturation", "a tanh MLP fed raw inputs (offset 500, scale 150)",
            "standardized inputs (zero mean, unit variance per feature)",
            (Code.SATURATION, Code.UNNORMALIZED_INPUT), (FixKind.NORMALIZATION,), _saturation),
    Problem("overfitting", "a 2×512 MLP trained 100 epochs on 128 points with 20 features (2 useful) and "
            "10% wrong labels", "weight decay 0.1 (AdamW), dropout 0.5 and early stopping (patience 10, best "
            "checkpoint restored)", (Code.OVERFITTING,),
            (FixKind.EARLY_STOPPING, FixKind.REGULARIZATION), _overfitting),
    Problem("underfitting", "a linear model (no hidden layer) on two spirals",
            "a bigger model: three hidden layers of 64 ReLU units", (Code.UNDERFITTING,), (FixKind.CAPACITY,),
            _underfitting),
)}


# --------------------------------------------------------------------------------------------- training

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


# ---------------------------------------------------------------------------------------------- command

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
