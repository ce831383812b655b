"""Precision and recall of each rule over the gradscope zoo (tests/zoo), calibration and hold-out separately.

    python benchmarks/zoo_scores.py [--logdir DIR] [--markdown-only]

A code *fires* on a run when the diagnosis has a warning or error finding with that code (info findings are
notes). For each code: a true positive is a case that lists it in ``must`` and where it fires; a false
negative, one that lists it in ``must`` where it does not; a false positive, a case where it fires although the
code is in the case's must-not set (every code the case neither requires nor allows, see tests/zoo/cases.py).
Cases that allow a code (``may``) do not count for it. Precision = TP / (TP + FP), recall = TP / (TP + FN).

Runs are trained once into ``--logdir`` (default: a temporary folder) and reused when the folder is given again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from gradscope.findings import Code
from tests.zoo.cases import CASES, Case
from tests.zoo.runner import Outcome, ZooRunner, fired


def score(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """code → {"tp", "fp", "fn", "tn"} over the outcomes."""
    table = {c.value: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for c in Code}
    for out in outcomes:
        got = fired(out.diagnosis)
        for code, row in table.items():
            if code in out.case.must:
                row["tp" if code in got else "fn"] += 1
            elif code in out.case.must_not:
                row["fp" if code in got else "tn"] += 1
    return table


def _ratio(a: int, b: int) -> str:
    return "–" if b == 0 else f"{a / b:.2f}"


def markdown(title: str, outcomes: list[Outcome]) -> str:
    table = score(outcomes)
    lines = [f"### {title} ({len(outcomes)} runs, {sum(o.case.healthy for o in outcomes)} healthy)", "",
             "| rule | TP | FN | FP | TN | precision | recall |", "|---|---:|---:|---:|---:|---:|---:|"]
    tot = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for code, r in table.items():
        for k in tot:
            tot[k] += r[k]
        lines.append(f"| `{code}` | {r['tp']} | {r['fn']} | {r['fp']} | {r['tn']} | "
                     f"{_ratio(r['tp'], r['tp'] + r['fp'])} | {_ratio(r['tp'], r['tp'] + r['fn'])} |")
    lines.append(f"| **all** | {tot['tp']} | {tot['fn']} | {tot['fp']} | {tot['tn']} | "
                 f"{_ratio(tot['tp'], tot['tp'] + tot['fp'])} | {_ratio(tot['tp'], tot['tp'] + tot['fn'])} |")
    failing = [o for o in outcomes if o.problems]
    lines.append("")
    lines.append(f"Cases passing all their checks: {len(outcomes) - len(failing)} of {len(outcomes)}.")
    for o in failing:
        lines.append(f"- `{o.case.name}`: " + "; ".join(p.split(":")[0] for p in o.problems))
    return "\n".join(lines)


def run_all(cases: list[Case], root: Path) -> list[Outcome]:
    torch.set_num_threads(1)
    runner = ZooRunner(root)
    return [runner.run(c) for c in cases]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", type=Path, default=None, help="where the zoo's runs are trained/reused")
    ap.add_argument("--markdown-only", action="store_true", help="print only the tables")
    args = ap.parse_args(argv)
    root = args.logdir or Path(tempfile.mkdtemp(prefix="gradscope-zoo-"))
    t0 = time.perf_counter()
    outcomes = run_all(CASES, root)
    elapsed = time.perf_counter() - t0
    if not args.markdown_only:
        for o in outcomes:
            status = "ok  " if not o.problems else "FAIL"
            print(f"{status} {'holdout' if o.case.holdout else 'calib  '} {o.case.name:42s} "
                  f"{o.seconds:5.1f}s  fired={sorted(fired(o.diagnosis))}" +
                  ("" if not o.problems else f"  problems={o.problems}"), file=sys.stderr)
        print(f"zoo: {len(outcomes)} runs in {elapsed:.1f}s (logs in {root})\n", file=sys.stderr)
    print(markdown("Calibration set", [o for o in outcomes if not o.case.holdout]))
    print()
    print(markdown("Hold-out set", [o for o in outcomes if o.case.holdout]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
