"""The shape of the fast reader (benchmarks/report_speed.py times it; these hold what makes it fast without
timing anything): step rows are decoded into one buffer per log and range-checked once per column, not per
record; the columns come out field-major and contiguous, shared with the ``Run`` without a copy; and none of
this loosens a check (a record refused after its rows were decoded leaves nothing behind)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.store import validate
from gradscope.store.jsonl import LogWriter, log_path, read_log
from gradscope.store.run import run_from_log
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS, LayerInfo, encode_rows
from tests.logfactory import make_header, step_record, write_log


def _layer_fn(step: int, i: int, layer: LayerInfo) -> dict[str, float | None]:
    """Values that differ per step and layer, so a row landing at the wrong index shows."""
    return {"count": 100.0 + step, "mean": step + i / 10, "var": 1.0 + i, "absmax": 3.0, "zero_frac": 0.25,
            "nonfinite": 0.0, "units": 8.0, "inactive": float(i), "dead": 0.0, "saturated": None, "dmean": None,
            "grad_norm": 0.5 / (1 + step), "calls": 1.0}


def _write(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, separators=(",", ":"))) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_rows_are_field_major_float64_columns_the_run_shares(tmp_path: Path) -> None:
    write_log(tmp_path, steps=30, layer_fn=_layer_fn)
    raw = read_log(log_path(tmp_path))
    for arr, fields in ((raw.layer_array, LAYER_FIELDS), (raw.param_array, PARAM_FIELDS)):
        assert arr.dtype == np.float64 and arr.shape[0] == 30 and arr.shape[2] == len(fields)
        assert arr.transpose(2, 0, 1).flags.c_contiguous   # [field, step, layer]: one block per statistic
    run = run_from_log(raw)
    for f, col in [*run.layer_stats.items(), *run.param_stats.items()]:
        assert col.flags.c_contiguous, f
    assert np.shares_memory(run.layer_stats["mean"], raw.layer_array)   # a view, not a copy
    mean = run.layer_stats["mean"]
    want = np.array([[s + i / 10 for i in range(mean.shape[1])] for s in range(30)], dtype=np.float32)
    np.testing.assert_array_equal(mean, want.astype(np.float64))
    assert np.isnan(run.layer_stats["saturated"]).all()
    assert raw.steps[3].layers[1] == tuple(np.float32(v).item() if v is not None else None
                                           for v in (_layer_fn(3, 1, raw.header.layers[1])[f] for f in LAYER_FIELDS))


def test_range_checks_run_once_per_column_not_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    real = validate.clamp_column

    def counting(col: np.ndarray, field: str) -> None:
        calls.append((field, col.shape))
        real(col, field)

    monkeypatch.setattr(validate, "clamp_column", counting)
    write_log(tmp_path, steps=200, layer_fn=_layer_fn)
    raw = read_log(log_path(tmp_path))
    assert sorted(f for f, _ in calls) == sorted([*LAYER_FIELDS, *PARAM_FIELDS])
    assert all(shape[0] == 200 for _, shape in calls)   # each call covers every step
    assert raw.layer_array.shape[0] == 200


@pytest.mark.parametrize("bad", [{"time": "now"}, {"lr": [None]}, {"skipped": 1}, {"params": "AAAA"},
                                 {"grad_norm_steps": [[1]]}])
def test_a_record_refused_after_its_rows_were_decoded_leaves_no_row_behind(tmp_path: Path,
                                                                           bad: dict[str, Any]) -> None:
    h = make_header()
    recs = [step_record(s, h, _layer_fn).to_dict() for s in range(4)]
    path = _write(log_path(tmp_path / "damaged"), [h.to_dict(), recs[0], {**recs[1], **bad}, recs[2], recs[3]])
    clean = _write(log_path(tmp_path / "clean"), [h.to_dict(), recs[0], recs[2], recs[3]])
    log, ref = read_log(path, warn=False), read_log(clean, warn=False)
    assert [m.step for m in log.step_meta] == [0, 2, 3]
    assert len(log.problems) == 1 and f"{path}:3: invalid record" in log.problems[0]
    np.testing.assert_array_equal(log.layer_array, ref.layer_array)
    np.testing.assert_array_equal(log.param_array, ref.param_array)


def test_out_of_range_values_become_nan_across_the_whole_log(tmp_path: Path) -> None:
    """The bounds are those of float32 values (what a per-record float32 check gave): ``dmean`` up to
    float32(1.001) is kept, the next float32 above it is not; Inf is a valid ``absmax`` but not a count."""
    h = make_header()
    j = {f: LAYER_FIELDS.index(f) for f in LAYER_FIELDS}
    edge = float(np.float32(1.001))
    above = float(np.nextafter(np.float32(1.001), np.float32(2)))
    cases = [("dmean", edge, edge), ("dmean", above, None), ("zero_frac", 1.0, 1.0), ("zero_frac", -0.0, 0.0),
             ("zero_frac", -1e-30, None), ("count", math.inf, None), ("absmax", math.inf, math.inf),
             ("mean", -5.0, -5.0), ("var", -1e-9, -1e-9), ("grad_norm", -1.0, None)]
    recs = []
    for s, (f, v, _) in enumerate(cases):
        row = [1.0] * len(LAYER_FIELDS)
        row[j[f]] = v
        rec = step_record(s, h).to_dict()
        rec["layers"] = encode_rows([row] + [None] * (len(h.layers) - 1), len(LAYER_FIELDS))
        recs.append(rec)
    path = _write(log_path(tmp_path), [h.to_dict(), *recs])
    log = read_log(path)
    assert not log.problems
    for s, (f, v, want) in enumerate(cases):
        got = log.steps[s].layers[0]
        assert got is not None
        expect = None if want is None else float(np.float32(want))
        assert got[j[f]] == expect, (f, v, got[j[f]])
        assert log.steps[s].layers[1] is None


def test_packed_and_list_rows_read_the_same(tmp_path: Path) -> None:
    h = make_header()
    packed = [step_record(s, h, _layer_fn).to_dict() for s in range(5)]
    lists = []
    for rec in packed:
        r = step_record(rec["step"], h, _layer_fn)
        lists.append({**rec, "layers": [list(x) if x is not None else None for x in r.layers],
                      "params": [list(x) if x is not None else None for x in r.params]})
    a = read_log(_write(log_path(tmp_path / "packed"), [h.to_dict(), *packed]))
    b = read_log(_write(log_path(tmp_path / "lists"), [h.to_dict(), *lists]))
    np.testing.assert_array_equal(a.layer_array, b.layer_array)
    np.testing.assert_array_equal(a.param_array, b.param_array)


def test_a_log_without_steps_or_layers_reads_empty_arrays(tmp_path: Path) -> None:
    h = make_header()
    log = read_log(_write(log_path(tmp_path / "no_steps"), [h.to_dict()]))
    assert log.layer_array.shape == (0, len(h.layers), len(LAYER_FIELDS))
    assert log.param_array.shape == (0, len(h.params), len(PARAM_FIELDS))
    assert run_from_log(log).layer_stats["mean"].shape == (0, len(h.layers))
    bare = {**h.to_dict(), "layers": [], "params": []}
    w = LogWriter(log_path(tmp_path / "no_layers"))
    w.write(bare)
    w.write({"kind": "step", "step": 0, "layers": "", "params": "", "grad_norm": 1.0})
    w.close()
    log = read_log(log_path(tmp_path / "no_layers"))
    assert log.layer_array.shape == (1, 0, len(LAYER_FIELDS)) and not log.problems
