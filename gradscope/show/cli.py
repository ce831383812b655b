"""The ``gradscope`` command line: each command is load → diagnose → render → exit code.

``gradscope report`` must run where only a log was copied to (no GPU, maybe no torch), so this module and
everything ``report`` imports stay torch-free. Commands that need torch (``demo``) live in their own modules
and are imported only when invoked: add them to ``_LAZY_COMMANDS``.

Exit codes: 0 nothing reached ``--fail-on``; 1 something did; 2 anything else — bad input (a missing or
empty folder, no log, a newer schema, nothing readable), a bad option, or a failure of gradscope itself —
with ONE ``error: ...`` line on stderr and never a traceback: exit 1 must mean "findings", so CI can tell a
crash from a verdict. Errors travel as click exceptions (``click.BadParameter``, ``InputError``) and
``_Group.main`` prints each as that one line. ``GRADSCOPE_TRACEBACK=1`` re-raises an internal failure with
its traceback, for a bug report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from gradscope.errors import GradscopeError, GradscopeWarning
from gradscope.judge.findings import Code, Severity
from gradscope.show.safe import clean_line

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C: the shell's convention (128 + SIGINT), neither a verdict nor an error of the input."""

_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gradscope.demo", "demo"),
}
"""name → (module, attribute) of commands imported only when run (or listed by ``--help``)."""

_FAIL_ON = {"warning": Severity.WARNING, "error": Severity.ERROR, "never": None}


class InputError(click.ClickException):
    """The input cannot be reported on (no such folder, no log, a newer schema): exit 2, not click's 1."""

    exit_code = EXIT_BAD_INPUT


class InternalError(click.ClickException):
    """gradscope itself failed; the message names the exception so a bug report can start from it."""

    exit_code = EXIT_BAD_INPUT


def _suggest(word: str, known: Sequence[str]) -> str:
    """``did you mean 'x'?`` for the closest known words (two at most), or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(known), n=2, cutoff=0.6)
    return "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""


class _Choice(click.Choice):  # type: ignore[type-arg]
    """A ``click.Choice`` that forgives case and ``-`` for ``_`` and answers a typo with "did you mean"."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            norm = value.strip().lower().replace("-", "_")
            if norm in self.choices:
                return norm
            known = [str(c) for c in self.choices]
            hint = _suggest(norm, known)
            self.fail(f"{value!r} is not a valid choice; {hint}" if hint
                      else f"{value!r} is not one of {', '.join(known)}", param, ctx)
        return super().convert(value, param, ctx)


def _one_line(e: BaseException) -> str:
    """An exception as one clean line: ``PATH: reason`` for OS errors, else its message (or its type)."""
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, click.ClickException):
        text = e.format_message()
    else:
        text = str(e)
    return " ".join(clean_line(text).split()) or type(e).__name__


def _internal(e: BaseException) -> str:
    """The one line for a failure of gradscope itself: what failed, and how to see more."""
    detail = " ".join(clean_line(str(e)).split())
    what = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
    return f"internal error: {what} (GRADSCOPE_TRACEBACK=1 shows where; please report it)"


def _error_line(e: click.ClickException) -> str:
    line = "error: " + _one_line(e)
    if isinstance(e, click.UsageError) and e.ctx is not None:   # click's hint, on this line, not two more
        line += f" (see '{e.ctx.command_path} {e.ctx.help_option_names[0]}')"
    return line


class _Group(click.Group):
    """The ``gradscope`` group: finds the torch-needing commands lazily, so ``gradscope report`` never
    imports them (a lazy command whose module is not installed is simply absent), and turns every error
    into one ``error: ...`` line on stderr with exit 2 (see the module docstring)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            _die(_error_line(e), e.exit_code if e.exit_code not in (EXIT_OK, EXIT_FINDINGS)
                 else EXIT_BAD_INPUT)
        except click.Abort:
            _die("error: interrupted", EXIT_INTERRUPTED)
        except Exception as e:   # a failure outside a command's body (parsing, a lazy import)
            if os.environ.get("GRADSCOPE_TRACEBACK") == "1":
                raise
            _die(f"error: {_internal(e)}", EXIT_BAD_INPUT)
        # A command that returned instead of calling ctx.exit: success. click returns Exit's code as rv.
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

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


def _die(line: str, code: int) -> NoReturn:
    with contextlib.suppress(Exception):   # stderr itself is gone (a closed pipe): the exit code still says it
        click.echo(line, err=True)
    sys.exit(code)


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
            hint = _suggest(name, sorted(fields))
            raise click.BadParameter(f"unknown threshold {name!r}; {hint}" if hint else
                                     f"unknown threshold {name!r} (known: {', '.join(sorted(fields)) or 'none'})",
                                     param_hint="--threshold")
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
                if changes[name] != changes[name]:   # NaN compares false with everything: no rule could use it
                    raise ValueError(raw)
        except ValueError:
            raise click.BadParameter(f"{name}: {raw!r} is not a {type(current).__name__}",
                                     param_hint="--threshold") from None
    return dataclasses.replace(defaults, **changes)


def _warning_line(msg: str) -> str:
    msg = " ".join(clean_line(msg).split())   # one line with no escape sequence, whatever the message held
    return "warning: " + msg.removeprefix("gradscope: ")


@main.command("report")
@click.argument("logdir", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=_Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="text (rich; plain when not a terminal), strict JSON, or Markdown.")
@click.option("--fail-on", type=_Choice(list(_FAIL_ON)), default="error", show_default=True,
              help="Exit 1 when a finding of this severity or worse is present.")
@click.option("--ignore", "ignore", multiple=True, metavar="CODE",
              type=_Choice([c.value for c in Code]),
              help="A finding code to turn off (repeatable): " + ", ".join(c.value for c in Code) + ".")
@click.option("--baseline-error", callback=_parse_baseline, metavar="FLOAT",
              help="Human-level/Bayes error for the bias/variance verdict, e.g. 0.005 or 0.5%.")
@click.option("--threshold", "threshold", multiple=True, metavar="NAME=VALUE",
              help="Override one field of gradscope.judge.thresholds.Thresholds (repeatable).")
def report_command(logdir: str, fmt: str, fail_on: str, ignore: tuple[str, ...], baseline_error: float | None,
                   threshold: tuple[str, ...]) -> None:
    """Diagnose the run(s) in LOGDIR (a run folder, or a folder of run folders)."""
    ctx = click.get_current_context()
    try:
        code = _report(logdir, fmt=fmt, fail_on=fail_on, ignore=ignore, baseline_error=baseline_error,
                       threshold=threshold)
    except click.ClickException:
        raise
    except Exception as e:   # whatever it is, exit 2 with one line: exit 1 would read as "findings present"
        if os.environ.get("GRADSCOPE_TRACEBACK") == "1":
            raise
        raise InternalError(_internal(e)) from e
    ctx.exit(code)


def _report(logdir: str, *, fmt: str, fail_on: str, ignore: tuple[str, ...], baseline_error: float | None,
            threshold: tuple[str, ...]) -> int:
    """The body of ``gradscope report``: the exit code after printing the report, or a click exception."""
    from gradscope.show.report import report

    thresholds = _parse_thresholds(threshold)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rep = report(logdir, thresholds=thresholds, ignore=ignore, baseline_error=baseline_error)
        except (GradscopeError, OSError) as e:
            _flush_warnings(caught)
            raise InputError(_one_line(e)) from e
    _flush_warnings(caught)
    # Render completely before writing: a failure half-way must not leave half a report on stdout.
    if fmt == "json":
        out = rep.to_json() + "\n"
    elif fmt == "markdown":
        out = rep.to_markdown()
    else:
        out = _render_rich(rep)
    _write_stdout(out)
    worst = rep.max_severity()
    limit = _FAIL_ON[fail_on]
    failed = limit is not None and worst is not None and worst.rank >= limit.rank
    return EXIT_FINDINGS if failed else EXIT_OK


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


def _render_rich(rep: Any) -> str:
    """The text report: coloured at the terminal's width on a terminal; plain, with no trailing padding, at
    ``$COLUMNS`` or 100 on a pipe, a file or a CI log."""
    if not sys.stdout.isatty():
        try:
            width = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            width = 100
        return str(rep.render_text(width=max(width, 20)))
    from rich.console import Console

    console = Console(highlight=False, emoji=False, markup=False)
    with console.capture() as captured:
        console.print(rep)
    return captured.get()


def _write_stdout(text: str) -> None:
    """Write the report; a character the terminal's encoding lacks becomes ``?`` instead of a crash (a
    non-UTF-8 locale cannot show the sparkline, but it can show the verdict)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = text.encode(encoding, errors="replace").decode(encoding)
    try:
        click.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (``| head``). The verdict still stands and decides the exit code; send what
        # Python would flush at exit to devnull, so it does not fail again there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
