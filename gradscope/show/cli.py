"""The ``gradscope`` command line: each command is load → diagnose → render → exit code.

``gradscope report`` must run where only a log was copied to (no GPU, maybe no torch), so this module and
everything ``report`` imports stay torch-free. Commands that need torch (``demo``) live in their own modules
and are imported only when invoked: add them to ``_LAZY_COMMANDS``.

Exit codes: 0 nothing reached ``--fail-on``; 1 something did; 2 bad input (a missing or empty folder, no
log, a newer schema, nothing readable, a bad option) with a one-line error on stderr, never a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Any

import click

from gradscope.errors import GradscopeError, GradscopeWarning
from gradscope.judge.findings import Code, Severity

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2

_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gradscope.demo", "demo"),
}
"""name → (module, attribute) of commands imported only when run (or listed by ``--help``)."""

_FAIL_ON = {"warning": Severity.WARNING, "error": Severity.ERROR, "never": None}


class _Group(click.Group):
    """A click group that finds the torch-needing commands lazily, so ``gradscope report`` never imports
    them; a lazy command whose module is not installed is simply absent."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n, (mod, _) in _LAZY_COMMANDS.items() if _module_exists(mod)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in _LAZY_COMMANDS:
            return cmd
        mod_name, attr = _LAZY_COMMANDS[cmd_name]
        if not _module_exists(mod_name):
            return None
        found = getattr(importlib.import_module(mod_name), attr)
        return found if isinstance(found, click.Command) else None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradscope", prog_name="gradscope")
def main() -> None:
    """gradscope: find what is wrong with a PyTorch training run, and what to change."""


def _parse_baseline(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    try:
        x = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (e.g. 0.005 or 0.5%)") from None
    if not 0.0 <= x < 1.0:
        raise click.BadParameter(f"{value!r} is not an error rate in [0, 1) (e.g. 0.005 or 0.5%)")
    return x


def _parse_thresholds(values: tuple[str, ...]) -> Any:
    """``NAME=VALUE`` pairs → a ``Thresholds`` with those fields replaced (``None`` when there are none)."""
    if not values:
        return None
    from gradscope.judge.thresholds import Thresholds

    defaults = Thresholds()
    fields = {f.name: f for f in dataclasses.fields(Thresholds)}
    changes: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--threshold")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise click.BadParameter(f"unknown threshold {name!r} (known: {known})", param_hint="--threshold")
        current = getattr(defaults, name)
        try:
            if isinstance(current, bool):
                if raw.strip().lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(raw)
                changes[name] = raw.strip().lower() in {"true", "1", "yes"}
            elif isinstance(current, int):
                changes[name] = int(raw)
            else:
                changes[name] = float(raw)
        except ValueError:
            raise click.BadParameter(f"{name}: {raw!r} is not a {type(current).__name__}",
                                     param_hint="--threshold") from None
    return dataclasses.replace(defaults, **changes)


def _warning_line(msg: str) -> str:
    msg = " ".join(str(msg).split())   # one line, whatever the message held
    return "warning: " + msg.removeprefix("gradscope: ")


@main.command("report")
@click.argument("logdir", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="text (rich; plain when not a terminal), strict JSON, or Markdown.")
@click.option("--fail-on", type=click.Choice(list(_FAIL_ON)), default="error", show_default=True,
              help="Exit 1 when a finding of this severity or worse is present.")
@click.option("--ignore", "ignore", multiple=True, metavar="CODE",
              type=click.Choice([c.value for c in Code]),
              help="A finding code to turn off (repeatable): " + ", ".join(c.value for c in Code) + ".")
@click.option("--baseline-error", callback=_parse_baseline, metavar="FLOAT",
              help="Human-level/Bayes error for the bias/variance verdict, e.g. 0.005 or 0.5%.")
@click.option("--threshold", "threshold", multiple=True, metavar="NAME=VALUE",
              help="Override one field of gradscope.judge.thresholds.Thresholds (repeatable).")
def report_command(logdir: str, fmt: str, fail_on: str, ignore: tuple[str, ...], baseline_error: float | None,
                   threshold: tuple[str, ...]) -> None:
    """Diagnose the run(s) in LOGDIR (a run folder, or a folder of run folders)."""
    from gradscope.show.report import report

    thresholds = _parse_thresholds(threshold)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rep = report(logdir, thresholds=thresholds, ignore=ignore, baseline_error=baseline_error)
        except (GradscopeError, OSError) as e:
            _flush_warnings(caught)
            click.echo(f"error: {_one_line(e)}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    _flush_warnings(caught)
    if fmt == "json":
        click.echo(rep.to_json())
    elif fmt == "markdown":
        click.echo(rep.to_markdown(), nl=False)
    else:
        _print_rich(rep)
    worst = rep.max_severity()
    limit = _FAIL_ON[fail_on]
    failed = limit is not None and worst is not None and worst.rank >= limit.rank
    sys.exit(EXIT_FINDINGS if failed else EXIT_OK)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    """One ``warning: ...`` line per distinct GradscopeWarning (damaged records, skipped runs). Other
    warnings (numpy's on an empty slice, deprecations) are not the user's to act on and are dropped."""
    seen: set[str] = set()
    for w in caught:
        if not issubclass(w.category, GradscopeWarning):
            continue
        line = _warning_line(str(w.message))
        if line not in seen:
            seen.add(line)
            click.echo(line, err=True)


def _print_rich(rep: Any) -> None:
    out = sys.stdout
    if not out.isatty():
        # A pipe, a file, a CI log: plain text with no trailing padding, at COLUMNS or a readable width.
        try:
            width = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            width = 100
        click.echo(rep.render_text(width=width), nl=False)
        return
    from rich.console import Console

    Console(file=out, highlight=False, emoji=False).print(rep)
