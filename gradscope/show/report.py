"""Report: the diagnoses of one or more runs, shown in rich text, strict JSON or Markdown. No torch.

``report(logdir)`` is the one call: load every run under ``logdir`` → ``diagnose`` each → ``Report``. A
``Report`` holds the data and exports it as JSON (``to_dict``/``to_json``, shape in docs/json-format.md);
the text and Markdown views are laid out from one sections model (``gradscope.show.sections``) by
``gradscope.show.text`` (rich: ``__rich_console__``, ``str``) and ``gradscope.show.markdown``
(``to_markdown``). The verdicts come from the rules, the notes from ``gradscope.judge.notes``.
"""

from __future__ import annotations

import enum
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult

from gradscope._numbers import finite, fmt_num, fmt_pct
from gradscope.errors import GradscopeWarning
from gradscope.judge.findings import Finding, Severity, root_first_key
from gradscope.judge.notes import CLIPPING_NOTE, report_notes
from gradscope.judge.thresholds import Thresholds
from gradscope.show import markdown, text
from gradscope.show.safe import no_surrogates
from gradscope.show.sections import (
    SPARK_WIDTH,
    Document,
    LayerRow,
    build_document,
    layer_rows,
    metrics_summary,
    severity_key,
    sparkline,
    sparklines,
)
from gradscope.store.load import load_runs
from gradscope.store.run import Run

if TYPE_CHECKING:   # the rules engine is imported by ``report()`` only: a Report of given diagnoses needs none
    from gradscope.judge.diagnose import Diagnosis

__all__ = ["CLIPPING_NOTE", "JSON_SCHEMA", "SPARK_WIDTH", "LayerRow", "Report", "fmt_num", "fmt_pct", "jsonable",
           "layer_rows", "report", "sparkline", "sparklines"]

JSON_SCHEMA = 1
"""Version of the JSON report shape (docs/json-format.md). Bumped only when a consumer would misread it."""


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Characters ``json.dumps(ensure_ascii=False)`` writes raw that a terminal or an editor acts on: DEL, the C1
controls (U+009B is a CSI), line separators and bidi overrides. They only occur inside strings, where a
``\\uXXXX`` escape means the same character."""


def jsonable(x: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples, enums and paths; NaN and ±Inf become ``None``,
    and a lone surrogate in a string (an undecodable file name) becomes U+FFFD so the JSON can be encoded."""
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, str):
        return no_surrogates(x)
    if isinstance(x, enum.Enum):
        return jsonable(x.value)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return no_surrogates(str(x))
    if isinstance(x, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return no_surrogates(str(x))


class Report:
    """The diagnoses of the runs found under one log folder, renderable and exportable.

    ``problems`` are messages about the input that belong to no run shown (a run folder that could not be
    read); each run's own problems (skipped records, damaged event files) are in ``run_problems(i)``.
    """

    def __init__(self, diagnoses: Iterable[Diagnosis], *, problems: Sequence[str] = ()) -> None:
        self.diagnoses: tuple[Diagnosis, ...] = tuple(diagnoses)
        self._problems: list[str] = []
        self._run_problems: list[list[str]] = [list(dict.fromkeys(d.run.problems)) for d in self.diagnoses]
        for msg in problems:
            self._add_problem(msg)

    def _add_problem(self, msg: str) -> None:
        msg = msg.removeprefix("gradscope: ")
        # Attribute a message to the run whose folder holds the named file (the deepest match wins).
        best, best_len = None, -1
        for i, d in enumerate(self.diagnoses):
            prefix = str(d.run.path) + os.sep
            rest = msg[len(prefix):] if msg.startswith(prefix) else None
            if rest is not None and os.sep not in rest.split(":", 1)[0] and len(prefix) > best_len:
                best, best_len = i, len(prefix)
        target = self._problems if best is None else self._run_problems[best]
        if msg not in target:
            target.append(msg)

    # -- queries --

    @property
    def runs(self) -> tuple[Run, ...]:
        return tuple(d.run for d in self.diagnoses)

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every run's findings, most severe first."""
        return tuple(sorted((f for d in self.diagnoses for f in d.findings), key=severity_key))

    @property
    def problems(self) -> tuple[str, ...]:
        """Every problem with the input, the runs' own included."""
        return tuple(self._problems) + tuple(p for ps in self._run_problems for p in ps)

    def run_problems(self, index: int) -> tuple[str, ...]:
        return tuple(self._run_problems[index])

    def max_severity(self) -> Severity | None:
        """The most severe finding of any run; ``None`` when there is none."""
        sev = [f.severity for d in self.diagnoses for f in d.findings]
        return max(sev, key=lambda s: s.rank) if sev else None

    def _shown_problems(self, index: int) -> list[str]:
        """The problems shown with run ``index``: its own, and with one run also those of no run."""
        own = list(self._run_problems[index])
        return self._problems + own if len(self.diagnoses) == 1 else own

    # -- JSON --

    def _run_dict(self, index: int) -> dict[str, Any]:
        d = self.diagnoses[index]
        run = d.run
        h = run.header
        return {
            "name": run.name,
            "path": str(run.path),
            "model": h.model if h else None,
            "status": "completed" if run.completed else ("not_closed" if run.has_log else "no_log"),
            "completed": bool(run.completed),
            "has_log": run.has_log,
            "steps": run.n_steps,
            "recorded_steps": len(run.steps),
            "step_unit": h.step_unit if h else None,
            "every": h.every if h else None,
            "ranks": run.ranks,
            "layers": [row.to_dict() for row in layer_rows(run)],
            "metrics": metrics_summary(run),
            "baseline_error": d.baseline_error,
            "not_evaluated": [ne.to_dict() for ne in d.not_evaluated],
            "clipping": run.clipping,
            "notes": list(report_notes(d)),
            "problems": self._shown_problems(index),
        }

    def _run_entry(self, index: int) -> dict[str, Any]:
        d = self.diagnoses[index]
        return {"run": self._run_dict(index),
                # The judge's order (root causes first); sorting again only orders a hand-built diagnosis.
                "findings": [f.to_dict() for f in sorted(d.findings, key=root_first_key)]}

    def to_dict(self) -> dict[str, Any]:
        """One run: ``{"schema", "run", "findings"}``; several: ``{"schema", "runs": [{"run", "findings"}],
        "problems"}``. Not yet JSON-safe (see ``to_json``)."""
        if len(self.diagnoses) == 1:
            return {"schema": JSON_SCHEMA, **self._run_entry(0)}
        return {"schema": JSON_SCHEMA, "runs": [self._run_entry(i) for i in range(len(self.diagnoses))],
                "problems": list(self._problems)}

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON (NaN and ±Inf become null; ``allow_nan=False`` proves it). Names stay exact, but no
        control character is written raw: ``json.dumps`` escapes C0, and ``_JSON_UNSAFE`` the rest, so
        ``--format json`` on a terminal cannot drive it."""
        doc = json.dumps(jsonable(self.to_dict()), indent=indent, allow_nan=False, ensure_ascii=False)
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", doc)

    # -- the text and Markdown views --

    def sections(self) -> Document:
        """The report as typed sections (what the text and Markdown renderers lay out)."""
        return build_document(self.diagnoses, self._run_problems, self._problems)

    def to_markdown(self) -> str:
        """The text report's content as GitHub-flavoured Markdown (a PR comment, a TB text panel)."""
        return markdown.render_markdown(self.sections())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from text.renderables(self.sections())

    def render_text(self, *, width: int = 100, color: bool = False) -> str:
        """The rich report as a string at a fixed width (plain unless ``color``)."""
        return text.render_text(self.sections(), width=width, color=color)

    def __str__(self) -> str:
        return self.render_text()

    def __repr__(self) -> str:
        sev = self.max_severity()
        return (f"<Report {len(self.diagnoses)} run(s), {sum(len(d.findings) for d in self.diagnoses)} "
                f"finding(s), worst: {sev.value if sev else 'none'}>")


# --- the one call ------------------------------------------------------------------------------------------

def report(logdir: str | os.PathLike[str], *, thresholds: Thresholds | None = None,
           ignore: Iterable[str] = (), baseline_error: float | None = None) -> Report:
    """Load every run under ``logdir``, diagnose each, and return the ``Report``.

    Damaged records are skipped with a ``GradscopeWarning`` each (the report lists them too); raises
    ``LogError`` when nothing can be read.
    """
    from gradscope.judge.diagnose import diagnose

    ignore = tuple(ignore)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradscopeWarning)
        runs, problems = load_runs(logdir)
    messages = [str(w.message) for w in caught if issubclass(w.category, GradscopeWarning)]
    # Re-emit what was caught so a caller's own warning filters still see it.
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    for p in problems:
        warnings.warn(f"gradscope: {p}", GradscopeWarning, stacklevel=2)
    diagnoses = [diagnose(r, thresholds, ignore=ignore, baseline_error=baseline_error) for r in runs]
    return Report(diagnoses, problems=[*messages, *problems])
