"""The report as data: a list of typed sections per run, built once, that every renderer walks.

``build_document`` turns diagnoses into a ``Document`` — per run a ``Summary``, ``Findings``, a
``LayerTable``, ``NotEvaluatedList``, ``Notes`` and ``Problems`` (each present only when it has something to
say) — with every number already formatted and every string from the log already cleaned: no control character,
no lone surrogate, and one line (a message is one line; a name with a newline must not forge a second one,
in the terminal or in Markdown). Only a fix's code snippet keeps its lines. The rich
renderer (``gradscope.show.text``) and the Markdown renderer (``gradscope.show.markdown``) only lay these
out, so the two can no longer drift apart on what a report contains; the JSON export (``Report.to_dict``)
shares ``layer_rows`` and ``metrics_summary`` with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope._numbers import DASH, finite, fmt_num, fmt_pct
from gradscope.judge.findings import Finding, Severity, root_first_key
from gradscope.judge.notes import dying_layers, report_notes
from gradscope.show.safe import clean, clean_line
from gradscope.store.run import CANONICAL_METRICS, Run

if TYPE_CHECKING:   # the rules engine is not needed to lay out a diagnosis someone else made
    from gradscope.judge.diagnose import Diagnosis

SPARK_WIDTH = 16
"""Characters of the gradient-norm sparkline: enough to see a trend, narrow enough for a 100-column table."""

_SPARK_CHARS = "▁▂▃▄▅▆▇█"


# --- per-run data (shared with the JSON export) ------------------------------------------------------------

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
        is_finite = np.isfinite(col)
        if not is_finite.any():
            out.append("·" * n_buckets)
            continue
        lo, hi = float(col[is_finite].min()), float(col[is_finite].max())
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


@dataclass(frozen=True)
class LayerRow:
    """One line of the per-layer table: the last recorded value of each statistic (raw, as in the log)."""

    name: str
    type: str
    act: str | None
    grad_norm: float | None       # L2 norm of the loss gradient w.r.t. the layer output, last recorded
    grad_norm_trend: str          # sparkline over the recorded steps
    act_std: float | None         # std of the layer output, last recorded
    dead_pct: float | None        # percent of units dead (never positive over the dead window)
    saturation_pct: float | None  # percent of units saturated (derivative below the header's threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "act": self.act, "grad_norm": finite(self.grad_norm),
                "act_std": finite(self.act_std), "dead_pct": finite(self.dead_pct),
                "saturation_pct": finite(self.saturation_pct)}


def _last_finite(a: np.ndarray) -> np.ndarray:
    """(S, L) → (L,): each column's last finite value, NaN when it has none.

    Only the columns whose last row is not finite are searched further back (usually none: scanning a
    10,000 × 200 log whole for every statistic was a tenth of a second per format)."""
    if a.shape[0] == 0:
        return np.full(a.shape[1], np.nan)
    last = a[-1]
    last_ok = np.isfinite(last)
    out = np.where(last_ok, last, np.nan)
    cols = np.flatnonzero(~last_ok)
    if cols.size:
        sub = a[:, cols]
        ok = np.isfinite(sub)
        idx = sub.shape[0] - 1 - np.argmax(ok[::-1], axis=0)
        out[cols] = np.where(ok.any(axis=0), sub[idx, np.arange(cols.size)], np.nan)
    return out


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
    dead = np.where(dying_layers(run.layers), dead, np.nan)
    last_grad = _last_finite(grad)
    trends = sparklines(grad)
    return [LayerRow(name=la.name or "(root)", type=la.type, act=la.act, grad_norm=finite(last_grad[i]),
                     grad_norm_trend=trends[i], act_std=finite(std[i]), dead_pct=finite(dead[i]),
                     saturation_pct=finite(sat[i]))
            for i, la in enumerate(run.layers)]


def metrics_summary(run: Run) -> dict[str, dict[str, Any]]:
    """Per canonical metric present: where it came from, how many points, its step range and last value."""
    out: dict[str, dict[str, Any]] = {}
    for name in CANONICAL_METRICS:
        s = run.metrics.get(name)
        if s is None or len(s) == 0:
            continue
        values = s.values[np.isfinite(s.values)]
        out[name] = {"source": s.source, "points": len(s), "first_step": int(s.steps[0]),
                     "last_step": int(s.steps[-1]), "last": finite(values[-1]) if values.size else None}
    return out


def severity_key(f: Finding) -> tuple[int, int, str]:
    """Most severe first, then by first step, then by code: the order every output lists findings in."""
    return (-f.severity.rank, f.steps[0] if f.steps else -1, f.code.value)


def causal_order(findings: Sequence[Finding]) -> list[tuple[Finding, int]]:
    """The findings in reading order, each with its depth: root causes first in the judge's order
    (``root_first_key``), each followed by the findings it explains, one level deeper.

    A consequence is placed under the last of its causes to be shown (``poor_init → saturation →
    vanishing_gradients`` reads as a chain, not twice), and each finding appears exactly once. A finding
    names a cause by code; the cause is a finding of that code that names it back as a consequence. Links
    that do not resolve (a hand-built diagnosis, a cause the caller removed) leave the finding at the top.
    """
    fs = sorted(findings, key=root_first_key)
    n = len(fs)
    causes: list[list[int]] = [[k for k in range(n) if k != j and fs[k].code in fs[j].caused_by
                                and fs[j].code in fs[k].consequences] for j in range(n)]
    children: list[list[int]] = [[j for j in range(n) if k in causes[j]] for k in range(n)]
    shown = [False] * n
    out: list[tuple[Finding, int]] = []

    def visit(i: int, depth: int) -> None:
        shown[i] = True
        out.append((fs[i], depth))
        for j in children[i]:
            if not shown[j] and all(shown[k] for k in causes[j]):
                visit(j, depth + 1)

    for i in range(n):                      # the roots, and findings whose causes are not in the list
        if not shown[i] and not causes[i]:
            visit(i, 0)
    for i in range(n):                      # only a cycle in hand-built links gets here
        if not shown[i]:
            visit(i, 0)
    return out


def steps_text(steps: tuple[int, int] | None) -> str:
    if steps is None:
        return DASH
    a, b = steps
    return str(a) if a == b else f"{a}–{b}"


def status_text(run: Run) -> str:
    if not run.has_log:
        return "no gradscope log (TensorBoard scalars only)"
    return "completed" if run.completed else "not closed (crashed or still running)"


# --- the sections ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """The run's heading and its key/value summary (a panel in the terminal, a table in Markdown)."""

    title: str                         # the run's name
    pairs: tuple[tuple[str, str], ...]
    worst: Severity | None             # colours the terminal panel's border


@dataclass(frozen=True)
class FixView:
    kind: str
    summary: str
    code: str                          # a snippet to paste; "" when there is none


@dataclass(frozen=True)
class FindingView:
    severity: Severity
    code: str
    title: str
    message: str
    layers: tuple[str, ...]
    steps: str | None                  # "37" or "10–39"; None when the finding has no step range
    confidence: str                    # "0.90"
    fixes: tuple[FixView, ...]
    depth: int = 0                     # 0: a root cause (or a finding on its own); n: folded n levels under a cause
    caused_by: tuple[str, ...] = ()    # codes of the findings that explain this one
    consequences: tuple[str, ...] = ()  # codes of the findings this one explains


@dataclass(frozen=True)
class Findings:
    """The findings in ``causal_order``: root causes first, each followed by what it explains (``depth``);
    ``empty_text`` is what to say when there are none."""

    items: tuple[FindingView, ...]
    empty_text: str


@dataclass(frozen=True)
class LayerLine:
    """A ``LayerRow`` formatted for display; ``flagged`` when a finding names the layer."""

    name: str
    type: str
    act: str
    grad_norm: str
    trend: str
    act_std: str
    dead: str
    saturated: str
    flagged: bool


@dataclass(frozen=True)
class LayerTable:
    rows: tuple[LayerLine, ...]


@dataclass(frozen=True)
class NotEvaluatedList:
    items: tuple[tuple[str, str], ...]   # (code, why it was not evaluated)


@dataclass(frozen=True)
class Notes:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Problems:
    """Problems with the input; ``report_level`` for those that belong to no run shown (several runs)."""

    items: tuple[str, ...]
    report_level: bool = False


Section = Summary | Findings | LayerTable | NotEvaluatedList | Notes | Problems


@dataclass(frozen=True)
class RunSections:
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class Document:
    runs: tuple[RunSections, ...]
    problems: Problems | None          # report-level problems (several runs only)


def _summary(d: Diagnosis) -> Summary:
    run = d.run
    h = run.header
    pairs: list[tuple[str, str]] = [("run", run.name)]
    if h is not None:
        pairs.append(("model", f"{h.model}, {len(run.layers)} layers watched, {len(run.params)} parameters"))
        unit = "optimizer steps" if h.step_unit == "optimizer" else "steps"
        every = f"every {h.every}" + (f" after the first {h.warmup}" if h.warmup else "")
        pairs.append(("steps", f"{run.n_steps} {unit}, {len(run.steps)} recorded ({every})"))
    pairs.append(("status", status_text(run)))
    if run.ranks > 1:
        pairs.append(("ranks", str(run.ranks)))
    metrics = metrics_summary(run)
    if metrics:
        pairs.append(("metrics", ", ".join(f"{k} ({v['source']}, {v['points']} points)"
                                           for k, v in metrics.items())))
    else:
        pairs.append(("metrics", "none logged (scope.log(train_loss=..., val_loss=...) enables the fit rules)"))
    if d.baseline_error is not None:
        pairs.append(("baseline error", f"{100 * d.baseline_error:.2f}%"))
    counts = {s: sum(1 for f in d.findings if f.severity is s) for s in Severity}
    verdict = (", ".join(f"{n} {s.value}{'s' if n != 1 else ''}"
                         for s, n in sorted(counts.items(), key=lambda kv: -kv[0].rank) if n)
               or "no problems found")
    pairs.append(("verdict", verdict))
    roots = [f"{f.code.value} (explains {', '.join(c.value for c in f.consequences)})"
             for f in d.findings if f.is_root and f.consequences]
    if roots:
        pairs.append(("root cause" if len(roots) == 1 else "root causes", "; ".join(roots)))
    return Summary(title=clean_line(run.name), pairs=tuple((k, clean_line(v)) for k, v in pairs), worst=d.worst)


def _finding_view(f: Finding, depth: int = 0) -> FindingView:
    return FindingView(
        severity=f.severity, code=f.code.value, title=clean_line(f.title), message=clean_line(f.message),
        layers=tuple(clean_line(la) for la in f.layers),
        steps=steps_text(f.steps) if f.steps is not None else None, confidence=f"{f.confidence:.2f}",
        fixes=tuple(FixView(kind=fx.kind.value, summary=clean_line(fx.summary), code=clean(fx.code or ""))
                    for fx in f.fixes),
        depth=depth, caused_by=tuple(c.value for c in f.caused_by),
        consequences=tuple(c.value for c in f.consequences))


def _layer_table(d: Diagnosis) -> LayerTable | None:
    rows = layer_rows(d.run)
    if not rows:
        return None
    flagged = {la for f in d.findings for la in f.layers}
    return LayerTable(tuple(
        LayerLine(name=clean_line(r.name), type=clean_line(r.type), act=clean_line(r.act or DASH),
                  grad_norm=fmt_num(r.grad_norm), trend=r.grad_norm_trend, act_std=fmt_num(r.act_std),
                  dead=fmt_pct(r.dead_pct), saturated=fmt_pct(r.saturation_pct), flagged=r.name in flagged)
        for r in rows))


def run_sections(d: Diagnosis, problems: Sequence[str]) -> RunSections:
    """The sections of one run, in reading order; ``problems`` are the input problems shown with it."""
    run = d.run
    out: list[Section] = [_summary(d)]
    out.append(Findings(items=tuple(_finding_view(f, depth) for f, depth in causal_order(d.findings)),
                        empty_text="No problems found." if run.has_log or run.metrics else "Nothing to judge."))
    table = _layer_table(d)
    if table is not None:
        out.append(table)
    if d.not_evaluated:
        out.append(NotEvaluatedList(tuple((ne.code.value, clean_line(ne.reason)) for ne in d.not_evaluated)))
    notes = report_notes(d)
    if notes:
        out.append(Notes(tuple(clean_line(n) for n in notes)))
    if problems:
        out.append(Problems(tuple(clean_line(p) for p in problems)))
    return RunSections(tuple(out))


def build_document(diagnoses: Sequence[Diagnosis], run_problems: Sequence[Sequence[str]],
                   problems: Sequence[str]) -> Document:
    """The whole report. With one run, problems that belong to no run are shown with it; with several,
    they close the report."""
    single = len(diagnoses) == 1
    runs = tuple(run_sections(d, [*problems, *run_problems[i]] if single else run_problems[i])
                 for i, d in enumerate(diagnoses))
    report_level = Problems(tuple(clean_line(p) for p in problems), report_level=True) \
        if problems and not single else None
    return Document(runs=runs, problems=report_level)
