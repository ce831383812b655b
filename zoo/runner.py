"""Run zoo cases with gradscope attached and check their diagnoses.

``ZooRunner(root)`` trains each case at most once into ``root/<case name>`` (a finished log is reused), so a
test session or a benchmark pays for every run once. ``check(case, diagnosis)`` lists what the diagnosis got
wrong for the case; an empty list is a pass.

A code *fires* when it has a finding of severity warning or error; info findings are notes (a healthy run may
have them) and count as not firing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from gradscope.judge.diagnose import Diagnosis, diagnose
from gradscope.judge.findings import Finding, Severity
from gradscope.store.load import load
from zoo.cases import Case


def fired(diag: Diagnosis) -> set[str]:
    """Codes with at least one warning or error finding."""
    return {f.code.value for f in diag.findings if f.severity is not Severity.INFO}


def stable_fired(case: Case, diag: Diagnosis) -> set[str]:
    """The codes that fired, less the ones ``case`` allows (``may``).

    Whether an optional code fires on a chaotic run depends on rounding, and rounding depends on the CPU's
    vector units (AVX2, AVX-512, NEON) even with the same torch: only the required and the forbidden codes are
    a verdict that holds on any machine. Scores count exactly these (``may`` codes never count), so snapshots,
    docs and tests compare this set, never the raw one.
    """
    return fired(diag) - case.may


def offered(diag: Diagnosis, finding: Finding) -> set[str]:
    """Fix kinds offered for ``finding``: its own, and those of the findings that explain it (``caused_by``,
    transitively). A consequence drops the fixes of a kind its cause already offers (judge/causes.py): the
    user is told to apply the cause's, so the cause's count for it."""
    kinds = {fx.kind.value for fx in finding.fixes}
    seen: set[str] = set()
    todo = [c.value for c in finding.caused_by]
    while todo:
        code = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        for f in diag.findings:
            if f.code.value == code and f.severity is not Severity.INFO:
                kinds |= {fx.kind.value for fx in f.fixes}
                todo += [c.value for c in f.caused_by]
    return kinds


def fix_kinds(diag: Diagnosis, code: str) -> set[str]:
    """Fix kinds offered for the warning/error findings of ``code`` (with their causes', see ``offered``)."""
    return {k for f in diag.findings if f.code.value == code and f.severity is not Severity.INFO
            for k in offered(diag, f)}


def check(case: Case, diag: Diagnosis) -> list[str]:
    """What the diagnosis got wrong for ``case`` (empty when it passes)."""
    got = fired(diag)
    problems = [f"missing {c}" for c in sorted(case.must - got)]
    problems += [f"unexpected {c}: " + "; ".join(f.message for f in diag.findings if f.code.value == c)
                 for c in sorted(got & case.must_not)]
    for code, kinds in sorted(case.fixes.items()):
        if code in got:
            lacking = kinds - fix_kinds(diag, code)
            if lacking:
                problems.append(f"{code} lacks fix kinds {sorted(lacking)}")
    return problems


@dataclass
class Outcome:
    case: Case
    logdir: Path
    seconds: float          # training time (0 when the log was reused)
    diagnosis: Diagnosis

    @property
    def problems(self) -> list[str]:
        return check(self.case, self.diagnosis)


class ZooRunner:
    """Trains cases into ``root`` once each and diagnoses them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.seconds: dict[str, float] = {}

    def logdir(self, case: Case) -> Path:
        d = self.root / case.name
        log = d / "gradscope.rank0.jsonl"
        if not log.exists() or not _closed(log):
            d.mkdir(parents=True, exist_ok=True)
            for f in d.iterdir():
                f.unlink()
            t0 = time.perf_counter()
            case.train(d)
            self.seconds[case.name] = time.perf_counter() - t0
        return d

    def run(self, case: Case) -> Outcome:
        d = self.logdir(case)
        runs = load(d, warn=False)
        return Outcome(case, d, self.seconds.get(case.name, 0.0), diagnose(runs[0]))


def _closed(path: Path, size: int = 4096) -> bool:
    """The log ends with the ``close`` record: the run finished (a crashed or interrupted one is retrained)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - size))
        tail = fh.read().decode("utf-8", "replace").replace(" ", "")
    return '"kind":"close"' in tail
