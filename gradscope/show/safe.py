"""Names are data, not markup: the one place that makes a string from a log safe to show.

Layer names, module types, run folders, TensorBoard tags and the messages that quote them come from the
user's model and disk. Printed raw they could move a terminal's cursor or set its title (ANSI/OSC escape
sequences), hide text (bidi overrides), or crash the writer (a lone surrogate, which is what
``os.fsdecode`` makes of a folder name that is not UTF-8, cannot be encoded). ``clean`` removes all of that
once, when the sections are built; each renderer then escapes for its own syntax (rich ``Text`` for the
terminal, code spans and backslashes in ``markdown``, ``json.dumps`` for JSON).
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 controls except tab and newline, DEL, C1 controls (U+0080–U+009F: 8-bit CSI/OSC), and the invisible
# direction marks and overrides that make text read differently from how it is stored ("Trojan source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAK = re.compile(r"[\n\t\u2028\u2029\u0085]+")

REPLACEMENT = "\ufffd"


def no_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so it can be encoded as UTF-8 (JSON keeps its
    control characters: ``json.dumps`` writes them as ``\\u001b`` escapes, which a terminal does not act on)."""
    return _SURROGATE.sub(REPLACEMENT, text)


def clean(text: object) -> str:
    """``text`` as a string with no control character but newline and tab, and no lone surrogate."""
    return _CONTROL.sub("", no_surrogates(str(text)))


def clean_line(text: object) -> str:
    """``clean``, on one line: a name is one line, whatever its module's ``__repr__`` or folder held."""
    return _LINE_BREAK.sub(" ", clean(text))
