"""docs/guarantees.md names, for every promise, the tests that hold it: each one must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guarantees.md"


def cited(text: str) -> list[tuple[str, str | None]]:
    """(test file, test name or None) for every backtick span ``tests/x.py[::name]`` or ``::name`` (which
    continues the file named before it on the same line)."""
    out: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        current: str | None = None
        for span in re.findall(r"`([^`]+)`", line):
            m = re.fullmatch(r"(tests/[\w/]+\.py)(?:::(\w+))?", span)
            if m:
                current = m.group(1)
                out.append((current, m.group(2)))
            elif (m := re.fullmatch(r"::(\w+)", span)) and current is not None:
                out.append((current, m.group(1)))
    return out


def test_every_cited_test_exists() -> None:
    refs = cited(PAGE.read_text(encoding="utf-8"))
    assert len(refs) > 40
    missing = []
    for path, name in refs:
        f = ROOT / path
        if not f.is_file():
            missing.append(path)
        elif name is not None and not re.search(rf"^def {name}\(", f.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/guarantees.md cites tests that do not exist: {missing}"


def test_the_citation_parser_follows_continuations() -> None:
    line = "| p | `tests/a.py::one`, `::two`, `tests/b.py` |"
    assert cited(line) == [("tests/a.py", "one"), ("tests/a.py", "two"), ("tests/b.py", None)]
