"""Names are data, not markup (issue 13.4): layer names, types, the model name and run folders come from the
user's model and disk, and every output must show them as characters — never as rich markup, Markdown
structure, HTML, terminal escape sequences, or an encoding crash.

The logs are hand-written (tests/logfactory.py) with crafted names; each format is rendered through the real
CLI and the dangerous sequences are looked for in the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from markdown_it import MarkdownIt

from gradscope.judge.diagnose import Diagnosis
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.show import markdown
from gradscope.show.cli import main
from gradscope.show.report import Report
from gradscope.show.safe import clean
from gradscope.store.load import load_run
from gradscope.store.schema import LayerInfo
from tests.logfactory import healthy_layer, make_header, write_log

ROOT = Path(__file__).resolve().parents[2]

EVIL = (
    "[/x]",                                        # closing tag with no opening one: rich.errors.MarkupError
    "[link=https://evil.example]click[/link]",     # rich markup for a hyperlink
    "osc\x1b]8;;https://evil.example\x1b\\y",     # an OSC 8 terminal hyperlink
    "\x1b[2J\x1b[31mred",                          # CSI: clear the screen, then red
    "c1\x9b31m\x07bell\x08\r",                     # 8-bit CSI, BEL, backspace, carriage return
    "tick`x``y",                                   # backticks: would close a Markdown code span
    "```\n# pwned",                                # would close a fence and start a heading
    "line\n# heading\n- item",                     # newlines: a heading and a list item
    "![](https://tracker.example/p.png)",          # a Markdown image: a tracking pixel in a PR comment
    "<img src=x onerror=alert(1)>",                # raw HTML
    "pipe|cell\\",                                 # a table cell break, a trailing backslash
    "bidi\u202eevil",                              # a right-to-left override
)
DEAD = EVIL[6]   # the layer whose units all die: its name then also appears in a finding and its fix
FORBIDDEN = ("\x1b", "\x9b", "\x07", "\x08", "\r", "\u202e")


def _layer(step: int, i: int, layer: LayerInfo) -> dict[str, float | None]:
    stats = healthy_layer(step, i, layer)
    stats["dead"] = float(layer.fan_out or 1) if layer.name == DEAD else 0.0
    return stats


def write_evil_log(logdir: Path) -> Path:
    header = make_header(tuple((name, "Lin`ear[/b]", 8, 8, "relu") for name in EVIL),
                         model="Evil\x1b]0;pwned\x07[/red]\n# model")
    write_log(logdir, steps=30, header=header, layer_fn=_layer)
    return logdir


def cli(*args: object) -> Result:
    # Wide enough that no name is folded across lines, so it can be looked for whole.
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def evil_dir(tmp_path: Path) -> Path:
    # A folder name that is not UTF-8: os.fsdecode turns the byte into a lone surrogate in the run's name.
    return write_evil_log(tmp_path / os.fsdecode(b"run-\xff"))


def _no_control_bytes(out: str) -> None:
    for c in FORBIDDEN:
        assert c not in out, f"{c!r} reached the output"
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in out), "a lone surrogate reached the output"


def test_text_shows_names_as_characters(evil_dir: Path) -> None:
    r = cli("report", evil_dir, "--format", "text", "--fail-on", "never")
    assert r.exit_code == 0, r.output
    _no_control_bytes(r.stdout)
    assert "[/x]" in r.stdout                                    # printed, not parsed as markup
    assert "[link=https://evil.example]click[/link]" in r.stdout
    assert "Lin`ear[/b]" in r.stdout and "\ufffd" in r.stdout   # the undecodable byte, replaced
    # A newline in a name forges no line of its own (here: no line starting with "# pwned").
    assert not [line for line in r.stdout.splitlines()
                if line.lstrip().startswith(("# pwned", "# heading", "- item", "# model"))]


def test_colour_text_has_no_hyperlink_or_injected_escape(evil_dir: Path) -> None:
    coloured = Report([Diagnosis(load_run(evil_dir))]).render_text(color=True, width=200)
    assert "\x1b[" in coloured                      # gradscope's own colours are there...
    assert "\x1b]" not in coloured                  # ...but no OSC (hyperlink, window title) from a name
    assert "\x1b[2J" not in coloured and "\x07" not in coloured
    assert "[link=https://evil.example]click[/link]" in coloured


def test_markdown_cannot_be_broken_out_of(evil_dir: Path) -> None:
    r = cli("report", evil_dir, "--format", "markdown", "--fail-on", "never")
    assert r.exit_code == 0, r.output
    md = r.stdout
    _no_control_bytes(md)
    assert not [line for line in md.splitlines() if line.startswith("# ")]
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<img" not in html and "<a " not in html and "<h1" not in html   # in code spans, names are text
    assert html.count("<h2") == 1                                   # the report's own heading only
    layer_table = html.split("<table>")[-1]
    assert layer_table.count("<tr>") == 1 + len(EVIL)              # no name split or added a row
    # Each name is one code span that renders as the name (newlines folded to spaces, as in any code span).
    for name in EVIL:
        shown = " ".join(clean(name).split("\n")).replace("&", "&amp;").replace("<", "&lt;") \
            .replace(">", "&gt;").replace('"', "&quot;")
        assert f"<code>{shown}</code>" in layer_table, name


def test_json_keeps_names_as_data(evil_dir: Path) -> None:
    r = cli("report", evil_dir, "--format", "json", "--fail-on", "never")
    assert r.exit_code == 0, r.output
    _no_control_bytes(r.stdout)                                     # written as \u001b, \u009b, ... escapes
    doc = json.loads(r.stdout)
    assert [la["name"] for la in doc["run"]["layers"]] == list(EVIL)
    assert "\ufffd" in doc["run"]["name"]
    assert any(DEAD in f["layers"] for f in doc["findings"])        # the crafted names went through the rules


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_real_process_never_crashes_on_a_surrogate(evil_dir: Path, fmt: str) -> None:
    """The real stdout is strict UTF-8: a lone surrogate reaching it would be a UnicodeEncodeError."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "gradscope", "report", os.fsencode(evil_dir), "--format", fmt,
                           "--fail-on", "never"], capture_output=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    out = proc.stdout.decode("utf-8")   # strict: valid UTF-8 or this raises
    _no_control_bytes(out)
    assert b"Traceback" not in proc.stderr


def test_a_hand_built_report_with_a_surrogate_renders_everywhere(tmp_path: Path) -> None:
    """Below the reader's own checks: a Report built from a Run whose names were never validated."""
    run = load_run(write_log(tmp_path, steps=5).parent)
    name = "fc\udcff\x1b[31m"
    finding = Finding(Code.DEAD_RELU, Severity.WARNING, f"Dead {name}", f"{name}: dead\n# owned", layers=(name,),
                      steps=(0, 4), fixes=(Fix(FixKind.INIT, f"init {name}", f"init(model.{name})\n```\n# x"),))
    rep = Report([Diagnosis(run, (finding,))], problems=[f"gradscope: {name}: odd"])
    for out in (str(rep), rep.to_markdown(), rep.to_json()):
        out.encode("utf-8")   # never raises
        _no_control_bytes(out)
    md = rep.to_markdown()
    assert not [line for line in md.splitlines() if line.startswith("# ")]
    html = MarkdownIt("commonmark").render(md)
    assert "<h1" not in html and html.count("<pre>") == 1          # the fix's fence was not closed early


@pytest.mark.parametrize(("raw", "expected"), [
    ("a`b", "``a`b``"), ("`x`", "`` `x` ``"), ("a```b", "````a```b````"), ("a\nb", "`a b`"), ("", "` `"),
])
def test_code_span_fence_outgrows_the_content(raw: str, expected: str) -> None:
    assert markdown.code(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("# h", "\\# h"), ("1. x", "1\\. x"), ("- y", "\\- y"), ("> q", "&gt; q"), ("[a](b)", "\\[a\\](b)"),
    ("a\n# b", "a # b"), ("ok: 1.5 fine", "ok: 1.5 fine"), ("val_loss", "val_loss"),
])
def test_prose_escaping(raw: str, expected: str) -> None:
    assert markdown.text(raw) == expected


def test_stderr_lines_carry_no_escape_sequence(tmp_path: Path) -> None:
    """The warning and error lines quote paths: a folder name must not drive the terminal there either."""
    from tests.logfactory import corrupt_line

    run_dir = tmp_path / "evil\x1b]0;title\x07\x1b[2J"
    corrupt_line(write_log(run_dir, steps=5), 3)
    r = cli("report", run_dir, "--fail-on", "never")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("warning: ") and "corrupt record" in r.stderr
    _no_control_bytes(r.stderr)
    missing = cli("report", tmp_path / "gone\x1b[2J\udcff")
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ")
    _no_control_bytes(missing.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_terminal_output_on_a_real_tty(evil_dir: Path) -> None:
    """On a terminal the report is coloured by rich: gradscope's own styles, but no sequence from a name."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    chunks = []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gradscope", "report", os.fsencode(evil_dir),
                                 "--fail-on", "never"], stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        os.close(follower)
        # Read while it writes: a pseudo-terminal holds only a few KB, a child writing more would block.
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:   # EIO: the child closed the terminal and everything has been read
                break
            if not chunk:
                break
            chunks.append(chunk)
        stderr = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=120)
    finally:
        os.close(leader)
    out = b"".join(chunks).decode("utf-8")
    assert proc.returncode == 0, stderr.decode("utf-8", "replace")
    assert "\x1b[" in out                                  # coloured: this is the terminal path
    assert "\x1b]" not in out and "\x1b[2J" not in out and "\x07" not in out and "\x9b" not in out
    assert "[link=https://evil.example]click[/link]" in out
