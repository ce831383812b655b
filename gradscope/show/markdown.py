"""The Markdown renderer: a ``sections.Document`` → GitHub-flavoured Markdown (a PR comment, a TensorBoard
text panel).

Strings from the log are escaped so they stay text: a name goes into a code span whose fence is longer than
any backtick run inside it, prose has its line breaks folded and the characters that would start a heading,
list, quote, link, image or HTML tag escaped, and a fix's snippet goes into a fence longer than any it holds.
A layer named ``x\\n# pwned`` or ``![](https://tracker)`` reads as that name, never as Markdown.
"""

from __future__ import annotations

import re

from gradscope._numbers import DASH
from gradscope.show.sections import (
    Document,
    Findings,
    LayerTable,
    Notes,
    NotEvaluatedList,
    Problems,
    RunSections,
    Section,
    Summary,
)

_BREAKS = re.compile(r"[\r\n\u2028\u2029\u0085]+")
# Inline syntax a name could open: links/images ([, ]), code spans (`), HTML (<, >), and the backslash
# itself (so a trailing one cannot escape what follows). Emphasis characters are left alone: at worst they
# italicise a word, and escaping them would make every snake_case metric name noisy.
_INLINE = re.compile(r"([\\`\[\]])")
# What turns a line into a block: ATX headings, quotes, list items, thematic breaks, tables, fences.
_BLOCK_START = re.compile(r"^(\s*\d*)([#>+*=|~_-]|(?<=\d)[.)](?=\s|$))")


def text(s: str) -> str:
    """Prose (a message, a summary, a note) as one line of Markdown that renders as exactly these characters
    (emphasis aside)."""
    one = _BREAKS.sub(" ", s).replace("\t", " ")
    one = _INLINE.sub(r"\\\1", one).replace("<", "&lt;").replace(">", "&gt;")
    return _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), one, count=1)


def cell(s: str) -> str:
    """``text`` for a table cell: a ``|`` would end the cell."""
    return text(s).replace("|", "\\|")


def code(s: str, *, in_table: bool = False) -> str:
    """``s`` as a code span no character of ``s`` can close: the fence is one backtick longer than the
    longest run inside, padded with a space when ``s`` starts or ends with a backtick or a space."""
    one = _BREAKS.sub(" ", s)
    if not one:
        return "` `"
    longest = max((len(m) for m in re.findall(r"`+", one)), default=0)
    fence = "`" * (longest + 1)
    if one[0] in "` " or one[-1] in "` ":
        one = f" {one} "
    if in_table:   # GFM splits table cells at | even inside a code span; \| is the escape it honours
        one = one.replace("|", "\\|")
    return f"{fence}{one}{fence}"


def fenced(snippet: str, language: str, indent: str = "") -> list[str]:
    """A fenced code block holding ``snippet``, with a fence longer than any backtick run in it."""
    longest = max((len(m) for m in re.findall(r"`{3,}", snippet)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{indent}{fence}{language}", *(f"{indent}{line}".rstrip() for line in snippet.splitlines()),
            f"{indent}{fence}"]


def render_markdown(doc: Document) -> str:
    parts = [_run(run) for run in doc.runs]
    if doc.problems is not None:
        parts.append("### Input problems\n\n" + "\n".join(f"- {text(p)}" for p in doc.problems.items))
    return "\n\n".join(parts).rstrip() + "\n"


def _run(run: RunSections) -> str:
    out: list[str] = []
    for s in run.sections:
        out += _section(s)
    return "\n".join(out).rstrip()


def _section(s: Section) -> list[str]:
    if isinstance(s, Summary):
        return [f"## gradscope report: {text(s.title)}", "", "| | |", "|---|---|",
                *(f"| {k} | {cell(v)} |" for k, v in s.pairs), ""]
    if isinstance(s, Findings):
        return _findings(s)
    if isinstance(s, LayerTable):
        return ["### Layers", "",
                "| layer | type | act | grad norm (last) | trend | act std | dead | saturated |",
                "|---|---|---|---:|---|---:|---:|---:|",
                *(f"| {code(r.name, in_table=True)} | {cell(r.type)} | {cell(r.act or DASH)} | {r.grad_norm} | "
                  f"{r.trend} | {r.act_std} | {r.dead} | {r.saturated} |" for r in s.rows), ""]
    if isinstance(s, NotEvaluatedList):
        return ["### Not evaluated", "", *(f"- {code(c)}: {text(reason)}" for c, reason in s.items), ""]
    if isinstance(s, Notes):
        return ["### Notes", "", *(f"- {text(n)}" for n in s.items), ""]
    if isinstance(s, Problems):
        return ["### Input problems", "", *(f"- {text(p)}" for p in s.items), ""]
    raise TypeError(f"no Markdown layout for {type(s).__name__}")   # pragma: no cover


def _findings(s: Findings) -> list[str]:
    out = [f"### Findings ({len(s.items)})", ""]
    if not s.items:
        out += [s.empty_text, ""]
    for f in s.items:
        # A consequence is one heading level below the finding that explains it (at most h6).
        level = "#" * min(4 + f.depth, 6)
        arrow = "↳ " if f.depth else ""
        out += [f"{level} {arrow}{f.severity.value.upper()} · {code(f.code)} — {text(f.title)}", "",
                text(f.message), ""]
        meta = []
        if f.layers:
            meta.append("layers: " + ", ".join(code(la) for la in f.layers))
        if f.steps is not None:
            meta.append(f"steps: {f.steps}")
        meta.append(f"confidence: {f.confidence}")
        out += [" · ".join(meta), ""]
        if f.caused_by:
            out += ["Caused by: " + ", ".join(code(c) for c in f.caused_by), ""]
        if f.consequences:
            out += ["Explains: " + ", ".join(code(c) for c in f.consequences), ""]
        for fx in f.fixes:
            out.append(f"- **{fx.kind}**: {text(fx.summary)}")
            if fx.code:
                out += ["", *fenced(fx.code, "python", indent="  ")]
        if f.fixes:
            out.append("")
        elif f.caused_by:
            its = "its cause" if len(f.caused_by) == 1 else "its causes"
            out += ["- **fix**: see " + ", ".join(code(c) for c in f.caused_by) + f" ({its})", ""]
    return out
