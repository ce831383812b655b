"""Precision and recall of each rule over the gradscope zoo (zoo/): calibration, hold-out, unseen hold-out, and
the views across them (the real recipes, all runs).

    python benchmarks/zoo_scores.py [--logdir DIR] [--markdown-only] [--snapshot benchmarks/zoo_snapshot.json]

A code *fires* on a run when the diagnosis has a warning or error finding with that code (info findings are
notes). For each code: a true positive is a case that lists it in ``must`` and where it fires; a false
negative, one that lists it in ``must`` where it does not; a false positive, a case where it fires although the
code is in the case's must-not set (every code the case neither requires nor allows, see zoo/cases.py).
Cases that allow a code (``may``) do not count for it. Precision = TP / (TP + FP), recall = TP / (TP + FN).

Runs are trained once into ``--logdir`` (default: a temporary folder) and reused when the folder is given again.
``--snapshot`` writes what docs/diagnoses.md is generated from (``benchmarks/gen_diagnoses.py``): per case its
group, labels and the codes that fired less the ones the case allows (``may``: whether those fire on a chaotic run
depends on the CPU's rounding), and per code the fix kinds offered and one example finding's fixes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from gradscope.judge.findings import Code, Severity
from zoo.cases import ALL_CODES, CASES, Case
from zoo.runner import Outcome, ZooRunner, fired, offered, stable_fired

GROUPS = (("calibration", "Calibration set"), ("holdout", "Hold-out set"), ("unseen", "Unseen hold-out set"))
"""Snapshot group name → table title, in the order the tables are printed."""


VIEWS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("recipes", "Real recipes", lambda r: str(r["name"]).startswith("recipe_")),
    ("all", "All runs", lambda r: True),
)
"""Views across the groups (name, table title, which snapshot rows): the real recipes of zoo/recipes.py (healthy
training recipes as practitioners write them and their broken twins, from every group) and the whole zoo."""


def group(case: Case) -> str:
    return "unseen" if case.unseen else "holdout" if case.holdout else "calibration"


def score_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """code → {"tp", "fp", "fn", "tn"} over snapshot rows (``must``, ``may``, ``fired`` lists of codes)."""
    table = {c.value: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for c in Code}
    for r in rows:
        must, may, got = set(r["must"]), set(r["may"]), set(r["fired"])
        for code, row in table.items():
            if code in must:
                row["tp" if code in got else "fn"] += 1
            elif code not in may:
                row["fp" if code in got else "tn"] += 1
    return table


def _ratio(a: int, b: int) -> str:
    return "–" if b == 0 else f"{a / b:.2f}"


def markdown_rows(title: str, rows: list[Mapping[str, Any]], heading: str = "###") -> str:
    """The precision/recall table of one group of snapshot rows, and the cases that fail a check."""
    table = score_rows(rows)
    healthy = sum(1 for r in rows if not r["must"] and not r["may"])
    lines = [f"{heading} {title} ({len(rows)} runs, {healthy} healthy)", "",
             "| rule | TP | FN | FP | TN | precision | recall |", "|---|---:|---:|---:|---:|---:|---:|"]
    tot = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for code, r in table.items():
        for k in tot:
            tot[k] += r[k]
        lines.append(f"| `{code}` | {r['tp']} | {r['fn']} | {r['fp']} | {r['tn']} | "
                     f"{_ratio(r['tp'], r['tp'] + r['fp'])} | {_ratio(r['tp'], r['tp'] + r['fn'])} |")
    lines.append(f"| **all** | {tot['tp']} | {tot['fn']} | {tot['fp']} | {tot['tn']} | "
                 f"{_ratio(tot['tp'], tot['tp'] + tot['fp'])} | {_ratio(tot['tp'], tot['tp'] + tot['fn'])} |")
    failing = [r for r in rows if r["problems"]]
    lines.append("")
    lines.append(f"Cases passing all their checks: {len(rows) - len(failing)} of {len(rows)}.")
    for r in failing:
        lines.append(f"- `{r['name']}`: " + "; ".join(p.split(":")[0] for p in r["problems"]))
    return "\n".join(lines)


def snapshot(outcomes: list[Outcome]) -> dict[str, Any]:
    """What the docs are generated from (JSON-ready): one row per case, fix kinds and an example per code."""
    rows = []
    kinds: dict[str, set[str]] = {c.value: set() for c in Code}
    examples: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        got = stable_fired(o.case, o.diagnosis)   # optional codes depend on the CPU's rounding: left out
        rows.append({"name": o.case.name, "group": group(o.case), "arch": o.case.arch,
                     "optimizer": o.case.optimizer, "data": o.case.data, "description": o.case.description,
                     "must": sorted(o.case.must), "may": sorted(o.case.may), "fired": sorted(got),
                     "problems": o.problems, "known_miss": o.case.known_miss})
        for f in o.diagnosis.findings:
            if f.severity is Severity.INFO or f.code.value not in got:
                continue
            kinds[f.code.value] |= offered(o.diagnosis, f)   # with its causes' fixes (judge/causes.py)
            # The example is the first calibration finding that stands as a root cause (its fixes are its
            # own), else the first one at all (then it names its causes).
            old = examples.get(f.code.value)
            if (f.code.value in o.case.must and group(o.case) == "calibration"
                    and (old is None or (old["caused_by"] and f.is_root))):
                examples[f.code.value] = {"case": o.case.name, "message": f.message,
                                          "caused_by": [c.value for c in f.caused_by],
                                          "fixes": [fx.to_dict() for fx in f.fixes]}
    return {"schema": 1, "codes": sorted(ALL_CODES), "cases": rows,
            "fix_kinds": {k: sorted(v) for k, v in kinds.items()}, "examples": examples}


def run_all(cases: list[Case], root: Path) -> list[Outcome]:
    torch.set_num_threads(1)
    runner = ZooRunner(root)
    return [runner.run(c) for c in cases]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--logdir", type=Path, default=None, help="where the zoo's runs are trained/reused")
    ap.add_argument("--markdown-only", action="store_true", help="print only the tables")
    ap.add_argument("--snapshot", type=Path, default=None, help="write the JSON snapshot docs are built from")
    args = ap.parse_args(argv)
    root = args.logdir or Path(tempfile.mkdtemp(prefix="gradscope-zoo-"))
    t0 = time.perf_counter()
    outcomes = run_all(CASES, root)
    elapsed = time.perf_counter() - t0
    if not args.markdown_only:
        for o in outcomes:
            status = "ok  " if not o.problems else "FAIL"
            print(f"{status} {group(o.case):11s} {o.case.name:46s} {o.seconds:5.1f}s  "
                  f"fired={sorted(fired(o.diagnosis))}" + ("" if not o.problems else f"  problems={o.problems}"),
                  file=sys.stderr)
        print(f"zoo: {len(outcomes)} runs in {elapsed:.1f}s (logs in {root})\n", file=sys.stderr)
    snap = snapshot(outcomes)
    for name, title in GROUPS:
        print(markdown_rows(title, [r for r in snap["cases"] if r["group"] == name]))
        print()
    for _, title, keep in VIEWS:
        print(markdown_rows(title, [r for r in snap["cases"] if keep(r)]))
        print()
    if args.snapshot is not None:
        args.snapshot.write_text(json.dumps(snap, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
