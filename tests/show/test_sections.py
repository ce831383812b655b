"""The sections model: built once, walked by the text and Markdown renderers; the judge's notes it shows;
the one set of number helpers show uses."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gradscope import _numbers
from gradscope.judge.diagnose import diagnose
from gradscope.judge.notes import CLIPPING_NOTE, counts_dead_units, report_notes
from gradscope.show.report import Report
from gradscope.show.sections import Findings, LayerTable, NotEvaluatedList, Summary
from gradscope.store.load import load_run
from gradscope.store.schema import LayerInfo
from tests.logfactory import healthy_layer, write_log

SHOW = Path(__file__).resolve().parents[2] / "gradscope" / "show"


def _dying_fc2(step: int, i: int, layer: LayerInfo) -> dict[str, float | None]:
    stats = healthy_layer(step, i, layer)
    if layer.name == "fc2":
        stats["dead"] = 64.0
    return stats


def test_both_renderers_show_what_the_sections_hold(tmp_path: Path) -> None:
    write_log(tmp_path, steps=30, layer_fn=_dying_fc2)
    rep = Report([diagnose(load_run(tmp_path))])
    (run,) = rep.sections().runs
    kinds = [type(s) for s in run.sections]
    assert kinds[:3] == [Summary, Findings, LayerTable] and NotEvaluatedList in kinds
    findings = next(s for s in run.sections if isinstance(s, Findings))
    table = next(s for s in run.sections if isinstance(s, LayerTable))
    assert "dead_relu" in {f.code for f in findings.items}
    assert [r.name for r in table.rows] == ["fc1", "fc2", "fc3"]
    assert [r.flagged for r in table.rows] == [False, True, False]
    text, md = str(rep), rep.to_markdown()
    for f in findings.items:
        assert f.code in text and f"`{f.code}`" in md and f.message in text and f.message in md
    for r in table.rows:
        assert r.dead in text and r.dead in md


def test_dead_units_count_only_before_a_relu() -> None:
    assert counts_dead_units("relu", "Linear") and counts_dead_units(None, "ReLU6")
    assert not counts_dead_units("sigmoid", "Linear") and not counts_dead_units("tanh", "Conv2d")
    assert not counts_dead_units(None, "Linear")


@pytest.mark.parametrize(("clipping", "notes", "expected"), [
    (False, ("a",), ("a",)),
    (True, ("a",), ("a", CLIPPING_NOTE)),
    (True, (CLIPPING_NOTE,), (CLIPPING_NOTE,)),   # said once, whoever said it first
])
def test_clipping_note(clipping: bool, notes: tuple[str, ...], expected: tuple[str, ...]) -> None:
    d: Any = SimpleNamespace(run=SimpleNamespace(clipping=clipping), notes=notes)
    assert report_notes(d) == expected


def test_number_helpers() -> None:
    assert _numbers.finite("1e400") is None and _numbers.finite(float("nan")) is None
    assert _numbers.finite(None) is None and _numbers.finite("x") is None and _numbers.finite(2) == 2.0
    assert _numbers.fmt_num(1234.0) == "1.23e+03" and _numbers.fmt_num(10000.0) == "1.00e+04"


def test_show_defines_no_number_helper_of_its_own() -> None:
    """One finite test and one number format (gradscope/_numbers.py): a second copy drifts."""
    dupes = ("finite", "_finite", "finite_or_none", "_is_finite", "fmt_num", "fmt_pct")
    for path in SHOW.glob("*.py"):
        defined = {n.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(n, ast.FunctionDef)}
        assert not defined & set(dupes), f"{path.name} defines {defined & set(dupes)}"


def test_last_finite_matches_a_plain_backward_search() -> None:
    """The per-layer table shows each column's last finite value: columns ending in NaN/Inf (a layer that
    stopped being recorded, a run that diverged) are searched back, a column with none gives NaN."""
    import math

    import numpy as np

    from gradscope.show.sections import _last_finite

    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 12))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[-5:, 3] = np.inf                  # a diverged tail
    a[-1, 4] = -np.inf
    a[:, 5] = np.nan                    # never recorded
    a[:-1, 6] = np.nan                  # only the last row
    a[1:, 7] = np.nan                   # only the first row
    got = _last_finite(a)
    for j in range(a.shape[1]):
        finite = [v for v in a[:, j] if math.isfinite(v)]
        want = finite[-1] if finite else math.nan
        assert (math.isnan(want) and math.isnan(got[j])) or got[j] == want, j
    assert math.isnan(got[5]) and got[7] == a[0, 7]
    assert _last_finite(np.empty((0, 3))).shape == (3,)
