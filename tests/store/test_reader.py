"""The reader validates before it allocates: every record is checked against the schema (types, ranges,
sizes vs the header) and a bad one is skipped with file:line; memory stays within a small multiple of the
log's size; TensorBoard event files are read one bounded record at a time."""

from __future__ import annotations

import functools
import json
import struct
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.errors import GradscopeWarning, LogError
from gradscope.judge.diagnose import diagnose
from gradscope.store import jsonl, tb_scalars, validate
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.load import load_run, load_runs
from gradscope.store.schema import LAYER_FIELDS
from tests.logfactory import make_header, step_record, write_log, write_tb_scalars


def _write_lines(logdir: Path, lines: list[Any]) -> Path:
    """A log of the given records (dicts are dumped, strings written as they are), one per line."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = log_path(logdir)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, separators=(",", ":"))) + "\n"
                            for x in lines), encoding="utf-8")
    return path


def _header() -> dict[str, Any]:
    return make_header().to_dict()


def _step(s: int) -> dict[str, Any]:
    return step_record(s, make_header()).to_dict()


# --- memory ----------------------------------------------------------------------------------------------

@functools.cache
def _crafted() -> dict[str, list[Any]]:
    n_layers = 4000
    many = {"kind": "header", "schema": 1, "layers": [{"name": f"l{i}"} for i in range(n_layers)]}
    one = {"kind": "header", "schema": 1, "layers": [{"name": "a"}], "layer_fields": ["count"]}
    return {
        # The attack that used to allocate 1.18 GB from 0.46 MB: a header promising 20,000 layers of 15,000
        # columns each, then a step whose rows are sized from it before they are checked.
        "wide_header": [{**many, "layers": [{"name": f"l{i}"} for i in range(20000)],
                         "layer_fields": [f"f{i}" for i in range(15000)]},
                        {"kind": "step", "step": 0, "layers": []}],
        "null_rows": [many, *({"kind": "step", "step": s, "layers": [None] * n_layers} for s in range(4))],
        "empty_rows": [many, *('{"kind":"step","step":' + str(s) + ',"layers":[' + ",".join(["[]"] * n_layers)
                               + "]}" for s in range(4))],
        "wrong_row_count": [many, *({"kind": "step", "step": s, "layers": [None]} for s in range(2000))],
        "packed_size_lies": [many, *({"kind": "step", "step": s, "layers": "AAAA"} for s in range(2000))],
        "many_steps": [one, *({"kind": "step", "step": s, "layers": [[1]]} for s in range(3000))],
        "far_steps": [one, {"kind": "step", "step": 2**53, "layers": [[1]],
                            "grad_norm_steps": [[s * 10**9, None] for s in range(8000)]}],
        "many_metric_names": [one, {"kind": "metrics", "step": 0, "values": {f"k{i}": 1 for i in range(8000)}}],
        "garbage_lines": [one, *(["x"] * 20000)],
        "deep": [one, "[" * 100000, "{\"a\":" * 20000],
    }


@pytest.fixture(scope="module")
def _warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One report first, so the lazily imported rules are not counted against the log."""
    d = tmp_path_factory.mktemp("warm")
    write_log(d, steps=3)
    for r in load_runs(d)[0]:
        diagnose(r)


@pytest.mark.parametrize("case", sorted(_crafted()))
def test_crafted_log_loads_within_the_memory_bound(tmp_path: Path, case: str, _warm: None) -> None:
    path = _write_lines(tmp_path / case, _crafted()[case])
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradscopeWarning)
            try:
                runs, _ = load_runs(path.parent)
                for r in runs:
                    diagnose(r)
            except LogError:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= validate.LOAD_MEMORY_FACTOR * size + validate.LOAD_MEMORY_BASE, (peak, size)


def test_wide_header_is_refused_before_any_row_is_allocated(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, _crafted()["wide_header"])
    with pytest.raises(LogError, match=r":1: invalid gradscope header \(layer_fields: 15000 columns"):
        read_log(path)


# --- steps -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["1e999", "Infinity", "-Infinity", "NaN", str(10**30), "-1", "2.0", "true",
                                 '"3"', "null", "[3]", str(2**53 + 1)])
def test_impossible_step_values_are_skipped_with_file_and_line(tmp_path: Path, bad: str) -> None:
    rec = json.dumps(_step(1), separators=(",", ":")).replace('"step":1,', f'"step":{bad},')
    assert bad in rec
    path = _write_lines(tmp_path, [_header(), _step(0), rec, _step(2)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 2]
    assert len(log.problems) == 1 and f"{path}:3: invalid record (step:" in log.problems[0]
    run = load_run(tmp_path, warn=False)
    assert run.steps.tolist() == [0, 2] and run.n_steps == 3


@pytest.mark.parametrize("field,value", [("grad_norm_steps", [[10**30, 1.0]]), ("grad_norm_steps", [[-1, 1.0]]),
                                         ("grad_norm_steps", [[1]]), ("lr", [None]), ("lr", "0.1"),
                                         ("time", "now"), ("skipped", 1), ("input", {"count": -5}),
                                         ("input", [1, 2]), ("layers", 7), ("params", [[1, 2, 3, 4, 5]]),
                                         ("grad_norm", "big")])
def test_a_step_field_of_the_wrong_type_or_range_skips_the_record(tmp_path: Path, field: str, value: Any) -> None:
    bad = {**_step(1), field: value}
    path = _write_lines(tmp_path, [_header(), _step(0), bad, _step(2)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 2]
    assert len(log.problems) == 1 and f"{path}:3: invalid record ({field}" in log.problems[0]


def test_out_of_range_statistics_and_huge_numbers_are_read_as_missing(tmp_path: Path) -> None:
    row = [1.0] * len(LAYER_FIELDS)
    row[LAYER_FIELDS.index("zero_frac")] = 2.0          # a fraction above 1
    row[LAYER_FIELDS.index("count")] = -3.0             # a negative count
    row[LAYER_FIELDS.index("mean")] = 1e308             # beyond float32: only damage writes that
    rec = {**_step(0), "layers": [row, None, None], "grad_norm": 1e308, "clip_norm": -1.0}
    path = _write_lines(tmp_path, [_header(), rec])
    log = read_log(path)
    first = log.steps[0].layers[0]
    assert first is not None
    assert first[LAYER_FIELDS.index("zero_frac")] is None and first[LAYER_FIELDS.index("count")] is None
    assert first[LAYER_FIELDS.index("mean")] is None and first[LAYER_FIELDS.index("var")] == 1.0
    assert log.step_meta[0].grad_norm is None and log.step_meta[0].clip_norm is None


def test_duplicate_and_backward_steps_are_problems_not_merged(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [_header(), _step(0), _step(1), _step(1), _step(0), _step(2)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 1, 2]
    assert [p.split(": ", 1)[0] for p in log.problems] == [f"{path}:4", f"{path}:5"]
    assert all("duplicate or backward step" in p for p in log.problems)


def test_second_header_is_a_problem_and_its_run_is_not_merged(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [_header(), _step(0), _step(1), _header(), _step(0), _step(5)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 1]
    assert f"{path}:4: a second header" in log.problems[0]
    assert len(log.problems) == 3   # and each step of the second run


def test_second_close_is_a_problem(tmp_path: Path) -> None:
    close = {"kind": "close", "step": 1, "time": 1.0, "extra": {}}
    path = _write_lines(tmp_path, [_header(), _step(0), close, {**close, "step": 9}])
    log = read_log(path, warn=False)
    assert log.close is not None and log.close.step == 1
    assert log.problems == [f"{path}:4: a second close record; skipped"]


def test_lone_surrogate_in_a_name_is_kept_as_data(tmp_path: Path) -> None:
    h = _header()
    h["layers"][0]["name"] = "fc\ud8001"
    h["model"] = "M\udfff"
    text = json.dumps(h, separators=(",", ":"))   # ensure_ascii: the surrogate travels as \\ud800
    assert "\\ud800" in text
    _write_lines(tmp_path, [text, {"kind": "activations", "acts": {"fc\ud8001": "relu\udc00"}},
                            _step(0), {"kind": "metrics", "step": 0, "values": {"lo\ud800ss": 1.0}}])
    run = load_run(tmp_path)
    assert run.layers[0].name == "fc\ufffd1" and run.layers[0].act == "relu\ufffd"
    assert run.header is not None and run.header.model == "M\ufffd"
    assert "lo\ufffdss" in run.metrics
    for s in (run.layers[0].name, run.header.model, *run.metrics):
        s.encode("utf-8")   # never a UnicodeEncodeError later


def test_invalid_utf8_bytes_do_not_stop_the_reader(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [_header(), _step(0)])
    with open(path, "ab") as f:
        f.write(b'{"kind":"metrics","step":0,"values":{"\xff\xfe":1.0}}\n')
    log = read_log(path)
    assert list(log.metrics[0].values) == ["\ufffd\ufffd"]


def test_problem_records_of_the_watch_become_readable_run_problems(tmp_path: Path) -> None:
    prob = {"kind": "problem", "step": 7, "where": "forward hook of fc2",
            "message": "RuntimeError: something\nwent wrong"}
    path = write_log(tmp_path, steps=3, extra_records=[prob, {"kind": "problem"}])
    run = load_run(tmp_path, warn=False)
    assert run.problems[0] == (f"{path}:6: the watch recorded a problem of its own at step 7 in forward hook "
                               "of fc2: RuntimeError: something went wrong")
    assert run.problems[1].endswith("(no message)")
    assert run.completed and run.steps.tolist() == [0, 1, 2]
    notes = diagnose(run).notes
    assert any("the watch recorded a problem of its own at step 7" in n for n in notes)


def test_header_with_a_wrong_type_is_a_log_error_naming_the_field(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [{**_header(), "every": "10"}, _step(0)])
    with pytest.raises(LogError, match=r":1: invalid gradscope header \(every: expected an integer"):
        read_log(path)
    _write_lines(tmp_path, [{**_header(), "layers": [{"name": "a", "fan_in": 1e999}]}])
    with pytest.raises(LogError, match=r"layers\[0\]\.fan_in"):
        read_log(path)


def test_line_longer_than_the_bound_is_skipped_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 4096)
    long = json.dumps({**_step(1), "lr": [0.1] * 2000})
    assert len(long) > 4096
    path = _write_lines(tmp_path, [_header(), _step(0), long, _step(2)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 2]
    assert log.problems == [f"{path}:3: record longer than 4096 bytes; skipped unread"]


def test_too_deep_nesting_is_refused_before_parsing(tmp_path: Path) -> None:
    deep = '{"kind":"metrics","step":0,"values":{},"x":' + "[" * 5000 + "]" * 5000 + "}"
    just = '{"kind":"metrics","step":1,"values":{},"x":' + "[" * 30 + "]" * 30 + "}"
    in_string = json.dumps({"kind": "metrics", "step": 2, "values": {"[" * 100: 1.0}})
    path = _write_lines(tmp_path, [_header(), deep, just, in_string])
    log = read_log(path, warn=False)
    assert [m.step for m in log.metrics] == [1, 2]   # brackets inside a string are not nesting
    assert log.problems == [f"{path}:2: record nested deeper than {validate.MAX_DEPTH} levels; skipped"]


def test_problem_lines_are_capped_and_counted(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [_header(), *(["not json"] * 500), _step(0)])
    log = read_log(path, warn=False)
    assert len(log.problems) == validate.MAX_PROBLEMS + 1
    assert log.problems[-1].startswith(f"{path}: {500 - validate.MAX_PROBLEMS} more problems")
    assert [m.step for m in log.step_meta] == [0]


def test_packed_rows_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    good = _step(0)
    short = {**_step(1), "layers": good["layers"][:-8]}
    not_b64 = {**_step(2), "layers": "!" * len(good["layers"])}
    path = _write_lines(tmp_path, [_header(), good, short, not_b64, _step(3)])
    log = read_log(path, warn=False)
    assert [m.step for m in log.step_meta] == [0, 3]
    assert "packed rows of" in log.problems[0] and "not base64" in log.problems[1]
    assert np.isfinite(log.layer_array[1]).any()


# --- TensorBoard event files -----------------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", tb_scalars._masked_crc32c(head)) + payload
            + struct.pack("<I", tb_scalars._masked_crc32c(payload)))


def test_length_checksum_matches_tensorboard() -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    for data in (b"", b"\x00" * 8, struct.pack("<Q", 123456789), b"gradscope"):
        assert tb_scalars._masked_crc32c(data) == masked_crc32c(data)


def test_huge_length_field_is_not_read_or_allocated(tmp_path: Path) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": [(i, 1.0) for i in range(5)]})
    head = struct.pack("<Q", 2**62)
    with open(path, "ab") as f:
        f.write(head + struct.pack("<I", tb_scalars._masked_crc32c(head)) + b"x" * 100)
    problems: list[str] = []
    tracemalloc.start()
    try:
        s = tb_scalars.read_scalars(tmp_path, warn=False, problems_out=problems)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s["val_loss"].steps.tolist() == list(range(5))
    assert len(problems) == 1 and "truncated or corrupt event record #" in problems[0]
    assert peak < 16 * 2**20


def test_flipped_length_checksum_stops_at_the_damage(tmp_path: Path) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": [(i, 1.0) for i in range(5)]})
    data = bytearray(path.read_bytes())
    sizes = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        sizes.append(pos)
        pos += 16 + n
    data[sizes[3] + 9] ^= 0x40   # the length checksum of the 4th record (the file version is the 1st)
    path.write_bytes(bytes(data))
    problems: list[str] = []
    s = tb_scalars.read_scalars(tmp_path, warn=False, problems_out=problems)
    assert s["val_loss"].steps.tolist() == [0, 1]
    assert "its length fails its checksum" in problems[0]


def test_large_records_are_skipped_unread_and_reading_goes_on(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": [(0, 1.0)]})
    monkeypatch.setattr(tb_scalars, "MAX_EVENT_RECORD_BYTES", 1000)
    with open(path, "ab") as f:
        f.write(_frame(b"\xff" * 5000))   # an "image": not parsed (it is not even a protobuf)
    later = write_tb_scalars(tmp_path / "x", {"val_loss": [(1, 2.0)]}).read_bytes()
    with open(path, "ab") as f:
        f.write(later)
    s = tb_scalars.read_scalars(tmp_path, warn=True)   # no warning: skipping a big record is not damage
    assert s["val_loss"].steps.tolist() == [0, 1]


def test_reading_stops_past_the_file_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tb_scalars(tmp_path, {"val_loss": [(i, 1.0) for i in range(100)]})
    monkeypatch.setattr(tb_scalars, "MAX_EVENT_FILE_BYTES", 1000)
    problems: list[str] = []
    s = tb_scalars.read_scalars(tmp_path, warn=False, problems_out=problems)
    assert 0 < len(s["val_loss"]) < 100
    assert "more than 1000 bytes of events" in problems[0]


def test_tensorboard_problems_reach_the_run(tmp_path: Path) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": [(i, 1.0) for i in range(5)]})
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.warns(GradscopeWarning):
        run = load_run(tmp_path)
    assert any("truncated" in p for p in run.problems)


def test_store_never_unpickles_evaluates_or_imports_torch() -> None:
    import ast

    store = Path(validate.__file__).parent
    for src in sorted(store.glob("*.py")):
        tree = ast.parse(src.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                         and node.module else [])
                assert not any(n.split(".")[0] in ("pickle", "torch", "marshal", "shelve") for n in names), src
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), src


def test_records_before_the_first_step_may_carry_step_minus_one(tmp_path: Path) -> None:
    """The watch writes step -1 for a metric logged (or a NaN loss seen) before training, and for a watch
    closed before any step; a step record of -1 is still refused."""
    path = _write_lines(tmp_path, [_header(), {"kind": "metrics", "step": -1, "values": {"train_loss": None}},
                                   {"kind": "nonfinite", "step": -1, "where": "loss"},
                                   {"kind": "metrics", "step": -2, "values": {}},
                                   {"kind": "close", "step": -1, "time": 0.0, "extra": {}}])
    log = read_log(path, warn=False)
    assert [m.step for m in log.metrics] == [-1] and log.nonfinite[0].step == -1
    assert log.close is not None and log.close.step == -1
    assert len(log.problems) == 1 and f"{path}:4: invalid record (step: -2 is outside -1.." in log.problems[0]
