"""Report: the diagnoses of one or more runs, shown in rich text, strict JSON or Markdown. No torch.

``report(logdir)`` is the one call: load every run under ``logdir`` → ``diagnose`` each → ``Report``. A
``Report`` renders itself in rich (``__rich_console__``), prints plainly (``str``), and exports
``to_json()`` (shape documented in docs/json-format.md) and ``to_markdown()`` (a PR comment, TensorBoard's
text panel). Presentation only lives here: the verdicts come from the rules, the wording of fixes from
``gradscope.judge.fixes``.
"""

from __future__ import annotations

import enum
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from gradscope.errors import GradscopeWarning
from gradscope.judge.diagnose import Diagnosis, diagnose
from gradscope.judge.findings import Finding, Severity
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load_runs
from gradscope.store.run import CANONICAL_METRICS, Run
from gradscope.store.schema import DYING_ACTIVATIONS

JSON_SCHEMA = 1
"""Version of the JSON report shape (docs/json-format.md). Bumped only when a consumer would misread it."""

SPARK_WIDTH = 16
"""Characters of the gradient-norm sparkline: enough to see a trend, narrow enough for a 100-column table."""

_SPARK_CHARS = "▁▂▃▄▅▆▇█"
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "cyan"}
_DASH = "–"


# --- numbers -----------------------------------------------------------------------------------------------

def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_num(x: float | None) -> str:
    """Short human form: 3 significant digits, scientific outside [1e-3, 1e4), a dash for missing/NaN."""
    f = _finite(x)
    if f is None:
        return _DASH
    if f != 0 and not 1e-3 <= abs(f) < 1e4:
        return f"{f:.2e}"
    return f"{f:.3g}"


def fmt_pct(x: float | None) -> str:
    f = _finite(x)
    return _DASH if f is None else f"{f:.1f}%"


def jsonable(x: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples, enums and paths; NaN and ±Inf become ``None``."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, enum.Enum):
        return jsonable(x.value)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _finite(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return str(x)


def sparkline(values: np.ndarray, width: int = SPARK_WIDTH) -> str:
    """A unicode sparkline of positive values on a log scale (gradient norms span decades).

    The values are split into ``width`` consecutive buckets (fewer when there are fewer values), each shown
    by the mean of its log10; a bucket with no finite positive value is ``·``.
    """
    return sparklines(np.asarray(values, dtype=float).reshape(-1, 1), width)[0]


def sparklines(values: np.ndarray, width: int = SPARK_WIDTH) -> list[str]:
    """``sparkline`` for every column of an (S, L) array at once (a 10,000 × 200 log in milliseconds)."""
    s, n_cols = values.shape
    if s == 0:
        return [""] * n_cols
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = np.isfinite(values) & (values > 0)
        logs = np.where(positive, np.log10(np.where(positive, values, 1.0)), np.nan)
    n_buckets = min(width, s)
    starts = (np.arange(n_buckets) * s) // n_buckets
    ok = np.isfinite(logs)
    sums = np.add.reduceat(np.where(ok, logs, 0.0), starts, axis=0)      # (B, L)
    counts = np.add.reduceat(ok.astype(np.int64), starts, axis=0)        # (B, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    levels = len(_SPARK_CHARS)
    out = []
    for j in range(n_cols):
        col = means[:, j]
        finite = np.isfinite(col)
        if not finite.any():
            out.append("·" * n_buckets)
            continue
        lo, hi = float(col[finite].min()), float(col[finite].max())
        span = hi - lo
        chars = []
        for v in col:
            if not math.isfinite(v):
                chars.append("·")
            elif span < 1e-12:
                chars.append(_SPARK_CHARS[levels // 2])
            else:
                chars.append(_SPARK_CHARS[min(levels - 1, int((v - lo) / span * levels))])
        out.append("".join(chars))
    return out


# --- per-run summaries -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerRow:
    """One line of the per-layer table: the last recorded value of each statistic."""

    name: str
    type: str
    act: str | None
    grad_norm: float | None       # L2 norm of the loss gradient w.r.t. the layer output, last recorded
    grad_norm_trend: str          # sparkline over the recorded steps
    act_std: float | None         # std of the layer output, last recorded
    dead_pct: float | None        # percent of units dead (never positive over the dead window)
    saturation_pct: float | None  # percent of units saturated (derivative below the header's threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "act": self.act, "grad_norm": _finite(self.grad_norm),
                "act_std": _finite(self.act_std), "dead_pct": _finite(self.dead_pct),
                "saturation_pct": _finite(self.saturation_pct)}


def _last_finite(a: np.ndarray) -> np.ndarray:
    """(S, L) → (L,): each column's last finite value, NaN when it has none."""
    if a.shape[0] == 0:
        return np.full(a.shape[1], np.nan)
    ok = np.isfinite(a)
    idx = a.shape[0] - 1 - np.argmax(ok[::-1], axis=0)
    vals = a[idx, np.arange(a.shape[1])]
    return np.where(ok.any(axis=0), vals, np.nan)


def layer_rows(run: Run) -> list[LayerRow]:
    """The per-layer table of ``run`` (empty when the run has no gradscope log)."""
    n = len(run.layers)
    if n == 0:
        return []

    def stat(name: str) -> np.ndarray:
        a = run.layer_stats.get(name)
        if a is not None and a.ndim == 2 and a.shape[1] == n:
            return a
        return np.full((len(run.steps), n), np.nan)

    grad = stat("grad_norm")
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(_last_finite(stat("var")))
        units = _last_finite(stat("units"))
        dead = 100.0 * _last_finite(stat("dead")) / units
        sat = 100.0 * _last_finite(stat("saturated")) / units
    # Dead units only mean something before a ReLU: a negative sigmoid/tanh input is not a dead unit.
    dying = [la.act in DYING_ACTIVATIONS or la.type in ("ReLU", "ReLU6") for la in run.layers]
    dead = np.where(dying, dead, np.nan)
    last_grad = _last_finite(grad)
    trends = sparklines(grad)
    return [LayerRow(name=la.name or "(root)", type=la.type, act=la.act, grad_norm=_finite(last_grad[i]),
                     grad_norm_trend=trends[i], act_std=_finite(std[i]), dead_pct=_finite(dead[i]),
                     saturation_pct=_finite(sat[i]))
            for i, la in enumerate(run.layers)]


CLIPPING_NOTE = ("gradient clipping is active: the optimizer stepped with a smaller gradient norm than backward "
                 "produced; the gradient norms reported here are the pre-clip ones")


def _notes(d: Diagnosis) -> tuple[str, ...]:
    """The diagnosis' notes, plus what the report knows from the run itself (clipping)."""
    extra = (CLIPPING_NOTE,) if d.run.clipping and CLIPPING_NOTE not in d.notes else ()
    return tuple(d.notes) + extra


def _status(run: Run) -> str:
    if not run.has_log:
        return "no gradscope log (TensorBoard scalars only)"
    return "completed" if run.completed else "not closed (crashed or still running)"


def _metrics_summary(run: Run) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in CANONICAL_METRICS:
        s = run.metrics.get(name)
        if s is None or len(s) == 0:
            continue
        finite = s.values[np.isfinite(s.values)]
        out[name] = {"source": s.source, "points": len(s), "first_step": int(s.steps[0]),
                     "last_step": int(s.steps[-1]), "last": _finite(finite[-1]) if finite.size else None}
    return out


def _severity_key(f: Finding) -> tuple[int, int, str]:
    return (-f.severity.rank, f.steps[0] if f.steps else -1, f.code.value)


def _steps_text(steps: tuple[int, int] | None) -> str:
    if steps is None:
        return _DASH
    a, b = steps
    return str(a) if a == b else f"{a}–{b}"


# --- the report --------------------------------------------------------------------------------------------

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
        return tuple(sorted((f for d in self.diagnoses for f in d.findings), key=_severity_key))

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

    # -- JSON --

    def _run_dict(self, index: int) -> dict[str, Any]:
        d = self.diagnoses[index]
        run = d.run
        h = run.header
        problems = list(self._run_problems[index])
        if len(self.diagnoses) == 1:
            problems = self._problems + problems
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
            "metrics": _metrics_summary(run),
            "baseline_error": d.baseline_error,
            "not_evaluated": [ne.to_dict() for ne in d.not_evaluated],
            "clipping": run.clipping,
            "notes": list(_notes(d)),
            "problems": problems,
        }

    def _run_entry(self, index: int) -> dict[str, Any]:
        d = self.diagnoses[index]
        return {"run": self._run_dict(index),
                "findings": [f.to_dict() for f in sorted(d.findings, key=_severity_key)]}

    def to_dict(self) -> dict[str, Any]:
        """One run: ``{"schema", "run", "findings"}``; several: ``{"schema", "runs": [{"run", "findings"}],
        "problems"}``. Not yet JSON-safe (see ``to_json``)."""
        if len(self.diagnoses) == 1:
            return {"schema": JSON_SCHEMA, **self._run_entry(0)}
        return {"schema": JSON_SCHEMA, "runs": [self._run_entry(i) for i in range(len(self.diagnoses))],
                "problems": list(self._problems)}

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON (NaN and ±Inf become null; ``allow_nan=False`` proves it)."""
        return json.dumps(jsonable(self.to_dict()), indent=indent, allow_nan=False, ensure_ascii=False)

    # -- Markdown --

    def to_markdown(self) -> str:
        """The text report's content as GitHub-flavoured Markdown (a PR comment, a TB text panel)."""
        parts: list[str] = []
        for i, d in enumerate(self.diagnoses):
            parts.append(self._run_markdown(i, d))
        if self._problems and len(self.diagnoses) != 1:
            parts.append("### Input problems\n\n" + "\n".join(f"- {_md_escape(p)}" for p in self._problems))
        return "\n\n".join(parts).rstrip() + "\n"

    def _run_markdown(self, index: int, d: Diagnosis) -> str:
        run = d.run
        out: list[str] = [f"## gradscope report: {_md_escape(run.name)}", ""]
        out += ["| | |", "|---|---|"]
        out += [f"| {k} | {_md_cell(v)} |" for k, v in self._summary_pairs(d)]
        out.append("")
        findings = sorted(d.findings, key=_severity_key)
        out.append(f"### Findings ({len(findings)})")
        out.append("")
        if not findings:
            out.append("No problems found." if run.has_log or run.metrics else "Nothing to judge.")
            out.append("")
        for f in findings:
            out.append(f"#### {f.severity.value.upper()} · `{f.code.value}` — {_md_escape(f.title)}")
            out.append("")
            out.append(_md_escape(f.message))
            out.append("")
            meta = []
            if f.layers:
                meta.append("layers: " + ", ".join(f"`{la}`" for la in f.layers))
            if f.steps is not None:
                meta.append(f"steps: {_steps_text(f.steps)}")
            meta.append(f"confidence: {f.confidence:.2f}")
            out.append(" · ".join(meta))
            out.append("")
            for fx in f.fixes:
                out.append(f"- **{fx.kind.value}**: {_md_escape(fx.summary)}")
                if fx.code:
                    out.append("")
                    out.append("  ```python")
                    out += [f"  {line}".rstrip() for line in fx.code.splitlines()]
                    out.append("  ```")
            if f.fixes:
                out.append("")
        rows = layer_rows(run)
        if rows:
            out.append("### Layers")
            out.append("")
            out.append("| layer | type | act | grad norm (last) | trend | act std | dead | saturated |")
            out.append("|---|---|---|---:|---|---:|---:|---:|")
            for r in rows:
                out.append(f"| `{_md_cell(r.name)}` | {_md_cell(r.type)} | {_md_cell(r.act or _DASH)} | "
                           f"{fmt_num(r.grad_norm)} | {r.grad_norm_trend} | {fmt_num(r.act_std)} | "
                           f"{fmt_pct(r.dead_pct)} | {fmt_pct(r.saturation_pct)} |")
            out.append("")
        if d.not_evaluated:
            out.append("### Not evaluated")
            out.append("")
            out += [f"- `{ne.code.value}`: {_md_escape(ne.reason)}" for ne in d.not_evaluated]
            out.append("")
        if _notes(d):
            out.append("### Notes")
            out.append("")
            out += [f"- {_md_escape(n)}" for n in _notes(d)]
            out.append("")
        problems = list(self._run_problems[index])
        if len(self.diagnoses) == 1:
            problems = self._problems + problems
        if problems:
            out.append("### Input problems")
            out.append("")
            out += [f"- {_md_escape(p)}" for p in problems]
            out.append("")
        return "\n".join(out).rstrip()

    # -- rich --

    def _summary_pairs(self, d: Diagnosis) -> list[tuple[str, str]]:
        run = d.run
        h = run.header
        pairs: list[tuple[str, str]] = [("run", run.name)]
        if h is not None:
            pairs.append(("model", f"{h.model}, {len(run.layers)} layers watched, "
                                   f"{len(run.params)} parameters"))
            unit = "optimizer steps" if h.step_unit == "optimizer" else "steps"
            every = f"every {h.every}" + (f" after the first {h.warmup}" if h.warmup else "")
            pairs.append(("steps", f"{run.n_steps} {unit}, {len(run.steps)} recorded ({every})"))
        pairs.append(("status", _status(run)))
        if run.ranks > 1:
            pairs.append(("ranks", str(run.ranks)))
        metrics = _metrics_summary(run)
        if metrics:
            pairs.append(("metrics", ", ".join(
                f"{k} ({v['source']}, {v['points']} points)" for k, v in metrics.items())))
        else:
            pairs.append(("metrics", "none logged (scope.log(train_loss=..., val_loss=...) enables the "
                                     "fit rules)"))
        if d.baseline_error is not None:
            pairs.append(("baseline error", f"{100 * d.baseline_error:.2f}%"))
        counts = {s: sum(1 for f in d.findings if f.severity is s) for s in Severity}
        verdict = (", ".join(f"{n} {s.value}{'s' if n != 1 else ''}"
                             for s, n in sorted(counts.items(), key=lambda kv: -kv[0].rank) if n)
                   or "no problems found")
        pairs.append(("verdict", verdict))
        return pairs

    def _run_renderables(self, index: int, d: Diagnosis) -> Iterator[Any]:
        run = d.run
        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold")
        summary.add_column()
        for k, v in self._summary_pairs(d):
            summary.add_row(k, v)
        worst = max((f.severity for f in d.findings), key=lambda s: s.rank, default=None)
        border = _SEVERITY_STYLE[worst] if worst is not None else "green"
        yield Panel(summary, title=f"gradscope report: {run.name}", title_align="left", border_style=border)
        for f in sorted(d.findings, key=_severity_key):
            style = _SEVERITY_STYLE[f.severity]
            head = Text()
            head.append(f"{f.severity.value.upper():<7}", style=style)
            head.append(f" {f.code.value}", style="bold")
            head.append(f" · {f.title}")
            yield head
            body: list[Any] = [Text(f.message)]
            meta = []
            if f.layers:
                meta.append("layers: " + ", ".join(f.layers))
            if f.steps is not None:
                meta.append(f"steps: {_steps_text(f.steps)}")
            meta.append(f"confidence: {f.confidence:.2f}")
            body.append(Text(" · ".join(meta), style="dim"))
            for fx in f.fixes:
                line = Text()
                line.append(f"fix ({fx.kind.value}): ", style="green")
                line.append(fx.summary)
                body.append(line)
                if fx.code:
                    snippet = Syntax(fx.code, "python", theme="ansi_dark", background_color="default",
                                     word_wrap=True)
                    body.append(Padding(snippet, (0, 0, 0, 2), expand=False))
            yield Padding(Group(*body), (0, 0, 1, 8), expand=False)
        rows = layer_rows(run)
        if rows:
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
            flagged = {la for f in d.findings for la in f.layers}
            for r in rows:
                table.add_row(r.name, r.type, r.act or _DASH, fmt_num(r.grad_norm), r.grad_norm_trend,
                              fmt_num(r.act_std), fmt_pct(r.dead_pct), fmt_pct(r.saturation_pct),
                              style="yellow" if r.name in flagged else None)
            yield table
            yield Text()
        if d.not_evaluated:
            yield Text("Not evaluated", style="bold")
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="dim")
            grid.add_column()
            for ne in d.not_evaluated:
                grid.add_row(ne.code.value, ne.reason)
            yield Padding(grid, (0, 0, 1, 2), expand=False)
        if _notes(d):
            yield Text("Notes", style="bold")
            yield Padding(Group(*(Text(f"- {n}") for n in _notes(d))), (0, 0, 1, 2), expand=False)
        problems = list(self._run_problems[index])
        if len(self.diagnoses) == 1:
            problems = self._problems + problems
        if problems:
            yield Text("Input problems", style="bold yellow")
            yield Padding(Group(*(Text(f"- {p}") for p in problems)), (0, 0, 1, 2), expand=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for i, d in enumerate(self.diagnoses):
            if i:
                yield Rule()
            yield from self._run_renderables(i, d)
        if self._problems and len(self.diagnoses) != 1:
            yield Text("Input problems", style="bold yellow")
            yield Padding(Group(*(Text(f"- {p}") for p in self._problems)), (0, 0, 0, 2), expand=False)

    def render_text(self, *, width: int = 100, color: bool = False) -> str:
        """The rich report as a string at a fixed width (plain unless ``color``)."""
        buf = io.StringIO()
        console = Console(file=buf, width=width, no_color=not color,
                          color_system="standard" if color else None, force_terminal=color,
                          highlight=False, emoji=False, legacy_windows=False)
        console.print(self)
        return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"

    def __str__(self) -> str:
        return self.render_text()

    def __repr__(self) -> str:
        sev = self.max_severity()
        return (f"<Report {len(self.diagnoses)} run(s), {sum(len(d.findings) for d in self.diagnoses)} "
                f"finding(s), worst: {sev.value if sev else 'none'}>")


def _md_escape(s: str) -> str:
    return s.replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(s: str) -> str:
    return _md_escape(str(s)).replace("|", "\\|").replace("\n", " ")


# --- the one call ------------------------------------------------------------------------------------------

def report(logdir: str | os.PathLike[str], *, thresholds: Thresholds | None = None,
           ignore: Iterable[str] = (), baseline_error: float | None = None) -> Report:
    """Load every run under ``logdir``, diagnose each, and return the ``Report``.

    Damaged records are skipped with a ``GradscopeWarning`` each (the report lists them too); raises
    ``LogError`` when nothing can be read.
    """
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
