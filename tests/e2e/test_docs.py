"""The docs stay true: their code runs, their names exist, their links resolve.

Convention for runnable examples: every fenced ```python block in a file of ``RUNNABLE`` is executed, in order,
in one namespace per file (like a doctest session) inside a fresh temporary folder. A block is skipped only
when the line before its fence is an HTML comment starting with ``<!-- no-run`` (signatures, sketches); the
comment is invisible on GitHub. Blocks in other languages (bash, json, toml, yaml) are never run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

RUNNABLE = ("index.md", "api.md", "log-format.md")
"""Docs whose ```python blocks are executed."""

_FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    run: bool


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and the no-run marker."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        out.append(Block(path, start + 1, lang, "\n".join(body) + "\n", not prev.startswith("<!-- no-run")))
        i += 1
    return out


def prose(path: Path) -> str:
    """The file without its fenced blocks and inline code spans (where link syntax is not a link)."""
    text = path.read_text(encoding="utf-8")
    kept: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
            continue
        kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (word characters, spaces and hyphens
    kept), spaces turned into hyphens."""
    text = re.sub(r"`", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    fence: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
            continue
        h = _HEADING.match(line)
        if h:
            base = slug(h.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def all_docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


# --------------------------------------------------------------------------------------- runnable examples

@pytest.mark.parametrize("name", RUNNABLE)
def test_doc_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = DOCS / name
    runnable = [b for b in blocks(path) if b.lang == "python" and b.run]
    assert runnable, f"{name} has no runnable python block"
    import gradscope

    assert callable(gradscope.diagnose) and callable(gradscope.report), "a submodule shadows a public function"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{name.replace('.', '_').replace('-', '_')}"}
    for b in runnable:
        where = f"{b.path.relative_to(ROOT)}:{b.line}"
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(b.code, where, "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"the example at {where} fails: {type(e).__name__}: {e}") from e


def test_no_run_marker_only_on_python_blocks() -> None:
    """A no-run marker before a non-Python block is a mistake (it would silently mean nothing)."""
    for name in RUNNABLE:
        lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
        for b in blocks(DOCS / name):
            prev = next((ln.strip() for ln in reversed(lines[:b.line - 1]) if ln.strip()), "")
            if prev.startswith("<!-- no-run"):
                assert b.lang == "python", f"{name}:{b.line}: no-run marker before a {b.lang or 'plain'} block"


# ------------------------------------------------------------------------------------ names are documented

def test_every_code_and_threshold_is_documented() -> None:
    from gradscope.judge.findings import Code
    from gradscope.judge.thresholds import Thresholds

    text = all_docs_text()
    missing = [c.value for c in Code if f"`{c.value}`" not in text]
    assert not missing, f"finding codes not mentioned in docs/: {missing}"
    missing = [f for f in Thresholds.names() if f"`{f}`" not in text]
    assert not missing, f"Thresholds fields not mentioned in docs/: {missing}"
    theory = (DOCS / "theory.md").read_text(encoding="utf-8")
    missing = [c.value for c in Code if f"`{c.value}`" not in theory]
    assert not missing, f"theory.md does not say which argument these rules rest on: {missing}"


def test_diagnoses_md_covers_every_code_and_threshold() -> None:
    path = DOCS / "diagnoses.md"
    from gradscope.judge.findings import Code
    from gradscope.judge.thresholds import Thresholds

    text = path.read_text(encoding="utf-8")
    missing = [c.value for c in Code if c.value not in text]
    assert not missing, f"diagnoses.md has no section for: {missing}"
    missing = [f for f in Thresholds.names() if f not in text]
    assert not missing, f"diagnoses.md does not mention these Thresholds fields: {missing}"


def test_api_md_covers_the_public_api() -> None:
    import gradscope
    from gradscope.measure.watch import watch

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [n for n in gradscope.__all__ if f"`{n}`" not in text]
    assert not missing, f"api.md does not document: {missing}"
    params = [p for p in inspect.signature(watch).parameters if p != "model"]
    missing = [p for p in params if f"`{p}`" not in text]
    assert not missing, f"api.md does not document these watch() options: {missing}"
    for p in inspect.signature(watch).parameters.values():
        if p.default is not inspect.Parameter.empty:
            shown = f"{p.name}={p.default!r}".replace("'", '"')
            assert shown in text, f"api.md: the watch signature lacks {shown}"


def test_cli_md_covers_every_option() -> None:
    import click

    from gradscope.show.cli import main

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        assert f"gradscope {name}" in text, f"cli.md does not document `gradscope {name}`"
        for param in cmd.params:
            if isinstance(param, click.Argument):
                assert (param.name or "").upper() in text, f"cli.md: {name} argument {param.name}"
                continue
            for opt in param.opts:
                assert opt in text, f"cli.md does not document `gradscope {name} {opt}`"
            if isinstance(param.type, click.Choice):
                for choice in param.type.choices:
                    assert str(choice) in text, f"cli.md: `gradscope {name} {param.opts[0]} {choice}`"


def test_log_format_md_covers_every_record_and_field() -> None:
    from gradscope.store import schema as records

    text = (DOCS / "log-format.md").read_text(encoding="utf-8")
    heads = anchors(DOCS / "log-format.md")
    for kind in ("header", "activations", "step", "metrics", "nonfinite", "grad_norms", "close"):
        assert kind in heads, f"log-format.md has no section `{kind}`"
    for f in (*records.LAYER_FIELDS, *records.PARAM_FIELDS):
        assert f"| `{f}` |" in text, f"log-format.md does not describe the row column {f}"
    for cls in (records.Header, records.StepRecord, records.LayerInfo, records.ParamInfo, records.InputStats,
                records.NonFiniteRecord, records.CloseRecord):
        for fld in dataclasses.fields(cls):
            assert f"`{fld.name}`" in text, f"log-format.md does not describe {cls.__name__}.{fld.name}"
    assert f'"schema": {records.SCHEMA_VERSION}' in text


# ---------------------------------------------------------------------------------------------- links

def _md_files() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def test_relative_links_resolve() -> None:
    bad: list[str] = []
    for md in _md_files():
        for m in _LINK.finditer(prose(md)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                bad.append(f"{where}: no such file")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where}: no heading with anchor #{anchor}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_slug_matches_github() -> None:
    assert slug("9. Bias and variance, with a baseline error") == "9-bias-and-variance-with-a-baseline-error"
    assert slug("`gradscope demo`") == "gradscope-demo"
    assert slug("Enums: `Severity`, `FixKind`, `Code`") == "enums-severity-fixkind-code"
    assert slug("`grad_norms`") == "grad_norms"
