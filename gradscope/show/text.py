"""The terminal renderer: a ``sections.Document`` → rich renderables.

Every string goes into a ``rich.text.Text`` (never a markup string), so a layer named ``[/x]`` or
``[link=…]`` is printed as those characters: rich markup is for gradscope's own styling only. The sections
arrive cleaned of control characters (``gradscope.show.safe``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from gradscope.judge.findings import Severity
from gradscope.show.sections import (
    Document,
    Findings,
    LayerTable,
    Notes,
    NotEvaluatedList,
    Problems,
    Section,
    Summary,
)

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "cyan"}


def renderables(doc: Document) -> Iterator[Any]:
    """What ``Report.__rich_console__`` yields: each run's sections, a rule between runs, then the problems
    that belong to no run."""
    for i, run in enumerate(doc.runs):
        if i:
            yield Rule()
        for section in run.sections:
            yield from _section(section)
    if doc.problems is not None:
        yield from _problems(doc.problems)


def _section(s: Section) -> Iterator[Any]:
    if isinstance(s, Summary):
        yield from _summary(s)
    elif isinstance(s, Findings):
        yield from _findings(s)
    elif isinstance(s, LayerTable):
        yield from _layer_table(s)
    elif isinstance(s, NotEvaluatedList):
        yield from _not_evaluated(s)
    elif isinstance(s, Notes):
        yield Text("Notes", style="bold")
        yield Padding(Group(*(Text(f"- {n}") for n in s.items)), (0, 0, 1, 2), expand=False)
    elif isinstance(s, Problems):
        yield from _problems(s)
    else:   # pragma: no cover - a new section type must be given a layout here
        raise TypeError(f"no terminal layout for {type(s).__name__}")


def _summary(s: Summary) -> Iterator[Any]:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for k, v in s.pairs:
        grid.add_row(Text(k), Text(v))
    border = SEVERITY_STYLE[s.worst] if s.worst is not None else "green"
    yield Panel(grid, title=Text(f"gradscope report: {s.title}"), title_align="left", border_style=border)


INDENT = 4
"""Columns a consequence is indented by, per level, under the finding that explains it."""


def _findings(s: Findings) -> Iterator[Any]:
    for f in s.items:
        style = SEVERITY_STYLE[f.severity]
        shift = INDENT * f.depth
        head = Text()
        if f.depth:
            head.append(" " * (shift - 2) + "↳ ", style="dim")
        head.append(f"{f.severity.value.upper():<7}", style=style)
        head.append(f" {f.code}", style="bold")
        head.append(f" · {f.title}")
        yield head
        body: list[Any] = [Text(f.message)]
        meta = []
        if f.layers:
            meta.append("layers: " + ", ".join(f.layers))
        if f.steps is not None:
            meta.append(f"steps: {f.steps}")
        meta.append(f"confidence: {f.confidence}")
        body.append(Text(" · ".join(meta), style="dim"))
        if f.caused_by:
            body.append(Text.assemble(("caused by: ", "magenta"), ", ".join(f.caused_by)))
        if f.consequences:
            body.append(Text.assemble(("explains: ", "magenta"), ", ".join(f.consequences)))
        for fx in f.fixes:
            line = Text()
            line.append(f"fix ({fx.kind}): ", style="green")
            line.append(fx.summary)
            body.append(line)
            if fx.code:
                snippet = Syntax(fx.code, "python", theme="ansi_dark", background_color="default", word_wrap=True)
                body.append(Padding(snippet, (0, 0, 0, 2), expand=False))
        if f.caused_by and not f.fixes:
            its = "its cause" if len(f.caused_by) == 1 else "its causes"
            body.append(Text.assemble(("fix: ", "green"), f"see {', '.join(f.caused_by)} ({its})"))
        yield Padding(Group(*body), (0, 0, 1, 8 + shift), expand=False)


def _layer_table(s: LayerTable) -> Iterator[Any]:
    table = Table(title="Layers (last recorded values)", title_justify="left", title_style="bold",
                  expand=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("layer", overflow="fold")
    table.add_column("type")
    table.add_column("act")
    table.add_column("grad norm", justify="right")
    table.add_column("trend", no_wrap=True)
    table.add_column("act std", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("saturated", justify="right")
    for r in s.rows:
        table.add_row(*(Text(c) for c in (r.name, r.type, r.act, r.grad_norm, r.trend, r.act_std, r.dead,
                                          r.saturated)),
                      style="yellow" if r.flagged else None)
    yield table
    yield Text()


def _not_evaluated(s: NotEvaluatedList) -> Iterator[Any]:
    yield Text("Not evaluated", style="bold")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    for code, reason in s.items:
        grid.add_row(Text(code), Text(reason))
    yield Padding(grid, (0, 0, 1, 2), expand=False)


def _problems(s: Problems) -> Iterator[Any]:
    yield Text("Input problems", style="bold yellow")
    # The run's own problems keep a blank line after them; the report's last block does not.
    bottom = 0 if s.report_level else 1
    yield Padding(Group(*(Text(f"- {p}") for p in s.items)), (0, 0, bottom, 2), expand=False)


def render_text(doc: Document, *, width: int = 100, color: bool = False) -> str:
    """The document as a string at a fixed width (plain unless ``color``), trailing spaces trimmed."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=not color, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, emoji=False, markup=False, legacy_windows=False)
    console.print(Group(*renderables(doc)))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
