"""diagnose(run) → findings. The entry point of the rules engine (no torch)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from gradscope.errors import GradscopeError
from gradscope.judge.causes import link
from gradscope.judge.findings import Code, Finding, Fix, NotEvaluated, Severity, root_first_key
from gradscope.judge.rules import RULES
from gradscope.judge.rules._common import Context, Rule
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run


@dataclass(frozen=True)
class Diagnosis:
    run: Run
    findings: tuple[Finding, ...] = ()
    not_evaluated: tuple[NotEvaluated, ...] = ()
    baseline_error: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)   # e.g. "gradient clipping is active"
    thresholds: Thresholds = field(default_factory=Thresholds)
    ignored: tuple[Code, ...] = ()

    @property
    def worst(self) -> Severity | None:
        """The highest severity among the findings, or None when there are none."""
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def codes(self) -> set[str]:
        return {f.code.value for f in self.findings}

    def by_code(self, code: Code | str) -> list[Finding]:
        c = Code(code)
        return [f for f in self.findings if f.code is c]


def parse_codes(codes: Iterable[str | Code]) -> tuple[Code, ...]:
    """Finding codes from strings (the CLI's ``--ignore``); an unknown code raises ``GradscopeError``."""
    out: list[Code] = []
    for c in codes:
        if isinstance(c, Code):
            out.append(c)
            continue
        try:
            out.append(Code(str(c).strip().lower().replace("-", "_")))
        except ValueError:
            known = ", ".join(x.value for x in Code)
            raise GradscopeError(f"unknown finding code {c!r}; known codes: {known}") from None
    return tuple(dict.fromkeys(out))


def _notes(run: Run) -> tuple[str, ...]:
    notes: list[str] = []
    if run.header is None:
        notes.append("no gradscope log: only the loss/accuracy rules could run (from TensorBoard scalars)")
    if run.skipped.size and run.skipped.any():
        notes.append(f"the optimizer skipped {int(run.skipped.sum())} recorded step(s) (AMP GradScaler overflow); "
                     f"they are left out of the gradient rules")
    if run.header is not None and not run.completed:
        notes.append("the log has no close record: the run crashed or is still running")
    notes += [f"log problem: {p}" for p in run.problems]
    return tuple(notes)


def _describe(e: BaseException, limit: int = 300) -> str:
    """``ExceptionType: message`` on one line, shortened: it goes into a report line."""
    msg = " ".join(str(e).split())
    if len(msg) > limit:
        msg = msg[:limit - 1] + "…"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _fixes(rule: Rule, f: Finding, run: Run, th: Thresholds) -> tuple[Fix, ...]:
    return tuple(fx for fx in rule.fixes(f, run, th) if fx is not None)


def diagnose(run: Run, thresholds: Thresholds | None = None, *, ignore: Iterable[str] = (),
             baseline_error: float | None = None) -> Diagnosis:
    """Run every rule on ``run``; findings root causes first (see ``judge/causes.py``), then by severity (errors
    first), then by first step. A finding another one explains names it in ``caused_by`` and keeps a severity no
    higher than its cause's.

    A rule (or its fixes) that raises does not abort the diagnosis: it is reported among the rules not
    evaluated as "rule failed: <ExceptionType>: <message>" (a finding whose fixes failed is kept, without
    fixes). ``ignore`` takes finding codes (strings such as ``"dead_relu"``); ignored rules do not run and appear
    neither among the findings nor among the rules not evaluated. ``baseline_error`` (0..1, human-level or
    Bayes error) enables the full bias/variance analysis. A run without a gradscope log (TensorBoard scalars
    only) still gets the loss and fit rules; the others are reported as not evaluated.
    """
    th = thresholds if thresholds is not None else Thresholds()
    if baseline_error is not None and not (0.0 <= float(baseline_error) <= 1.0):
        raise GradscopeError(f"baseline error must be a fraction between 0 and 1, got {baseline_error!r}")
    ignored = parse_codes(ignore)
    ctx = Context(baseline_error=None if baseline_error is None else float(baseline_error))
    not_evaluated: list[NotEvaluated] = []
    for code, rule in RULES.items():
        if code in ignored:
            continue
        # A rule that raises is a gradscope bug on an unusual log, never a reason to lose the rest of the
        # report: it becomes "not evaluated" with the exception, and the other rules still run.
        try:
            result = rule(run, th, ctx)      # checks the rule's needs first
        except Exception as e:   # any bug in one rule: the report says which and what
            not_evaluated.append(NotEvaluated(code, f"rule failed: {_describe(e)}"))
            continue
        if isinstance(result, NotEvaluated):
            not_evaluated.append(result)
            continue
        for f in result:
            try:
                fixes = _fixes(rule, f, run, th)
            except Exception as e:   # the verdict stands; only its fixes are lost
                not_evaluated.append(NotEvaluated(code, f"rule failed: fixes: {_describe(e)} (the finding is "
                                                        f"reported without fixes)"))
                fixes = ()
            ctx.findings.append(replace(f, fixes=fixes))
    notes = _notes(run)
    try:
        linked = link(ctx.findings, run, th)
    except Exception as e:   # the findings stand without their causal links
        linked = ctx.findings
        notes += (f"linking causes to consequences failed: {_describe(e)}",)
    findings = tuple(sorted(linked, key=root_first_key))
    return Diagnosis(run=run, findings=findings, not_evaluated=tuple(not_evaluated),
                     baseline_error=ctx.baseline_error, notes=notes, thresholds=th, ignored=ignored)
