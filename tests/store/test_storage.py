"""The log reader: every record type round-trips, damage is skipped with a warning naming file:line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gradscope.errors import GradscopeWarning, LogError
from gradscope.store.jsonl import LogWriter, log_files, log_path, read_log
from gradscope.store.schema import (
    LAYER_FIELDS,
    CloseRecord,
    InputStats,
    MetricsRecord,
    NonFiniteRecord,
    StepRecord,
    activations_record,
)
from tests.logfactory import corrupt_line, make_header, step_record, truncate_last_line, write_log


def _strict(text: str) -> object:
    def bad(c: str) -> object:
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=bad)


def test_every_record_type_round_trips(tmp_path: Path) -> None:
    header = make_header(every=2, warmup=3, dead_window=7)
    step = StepRecord(
        step=4, time=1.25,
        layers=tuple(tuple((i + j) / 32 for j in range(len(LAYER_FIELDS))) if i != 1 else None
                     for i in range(3)),
        params=tuple((0.5, 1.5, 2.0**-10, 0) for _ in header.params),  # float32-exact (rows are packed)
        grad_norm=2.5, grad_norm_steps=((3, 2.0), (4, 2.5)), lr=(0.1, 0.01),
        input=InputStats(mean=0.5, std=2.0, min=-1.0, max=9.0, count=128, feature_std_min=0.1,
                         feature_std_max=30.0, feature_mean_absmax=4.0),
        skipped=True,
    )
    metrics = MetricsRecord(step=4, values={"train_loss": 0.25, "val_acc": 0.75})
    nonfinite = NonFiniteRecord(step=9, where="gradient", layer="fc2", param="fc2.weight")
    close = CloseRecord(step=10, time=3.5, extra={"reason": "done"})
    path = log_path(tmp_path)
    w = LogWriter(path)
    for rec in (header.to_dict(), activations_record({"fc1": "relu"}), step.to_dict(), metrics.to_dict(),
                nonfinite.to_dict(), close.to_dict()):
        w.write(rec)
    w.close()
    w.close()  # a second close is harmless
    assert w.closed

    log = read_log(path)
    assert log.header == header
    assert log.activations == {"fc1": "relu"}
    assert log.steps == [step]
    assert log.metrics == [metrics]
    assert log.nonfinite == [nonfinite]
    assert log.close == close
    assert log.problems == []


def test_nan_and_inf_are_written_as_null(tmp_path: Path) -> None:
    header = make_header()
    rec = step_record(0, header, grad_norm=math.nan)
    rec = StepRecord(step=0, time=0.0, layers=rec.layers, params=rec.params, grad_norm=math.inf,
                     grad_norm_steps=((0, math.nan),))
    path = log_path(tmp_path)
    w = LogWriter(path)
    w.write(header.to_dict())
    w.write(rec.to_dict())
    w.write(MetricsRecord(step=0, values={"train_loss": math.nan, "val_loss": -math.inf}).to_dict())
    w.close()
    for line in path.read_text().splitlines():
        _strict(line)   # every line is strict JSON
    log = read_log(path)
    assert log.steps[0].grad_norm is None
    assert log.steps[0].grad_norm_steps == ((0, None),)
    assert log.metrics[0].values == {"train_loss": None, "val_loss": None}


def test_truncated_tail_keeps_everything_before_it(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=10, close=False)
    truncate_last_line(path)
    with pytest.warns(GradscopeWarning, match=r"gradscope\.rank0\.jsonl:\d+: truncated record"):
        log = read_log(path)
    assert [s.step for s in log.steps] == list(range(9))   # only the cut last step is lost
    assert len(log.problems) == 1
    assert log.close is None


def test_corrupt_middle_line_is_skipped_and_later_records_read(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=10)
    corrupt_line(path, 5)   # header, activations, steps 0, 1, then step 2 on line 5
    with pytest.warns(GradscopeWarning, match=rf"{path.name}:5: corrupt record") as rec:
        log = read_log(path)
    assert len(rec) == 1
    assert [s.step for s in log.steps] == [0, 1, *range(3, 10)]
    assert log.close is not None


def test_read_without_warning_still_reports_problems(tmp_path: Path) -> None:
    path = write_log(tmp_path, steps=5)
    corrupt_line(path, 3)
    log = read_log(path, warn=False)
    assert log.problems and f"{path}:3" in log.problems[0]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = write_log(tmp_path, header=make_header(schema=99))
    with pytest.raises(LogError, match="schema 99 is newer"):
        read_log(path)


@pytest.mark.parametrize("content", ["", "\n\n", '{"kind": "step", "step": 0}\n'])
def test_no_header_is_an_error(tmp_path: Path, content: str) -> None:
    path = log_path(tmp_path)
    path.write_text(content)
    with pytest.raises(LogError, match=str(path.name)):
        read_log(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no such log file"):
        read_log(tmp_path / "nope.jsonl")


def test_unknown_record_kinds_are_skipped_with_one_note_per_kind(tmp_path: Path) -> None:
    future = {"kind": "from_the_future", "x": 1}
    path = write_log(tmp_path, steps=3, extra_records=[future, future, {"kind": "other"}])
    log = read_log(path, warn=False)
    assert len(log.steps) == 3 and log.close is not None
    assert len(log.problems) == 2
    assert "unknown record kind 'from_the_future'" in log.problems[0] and f"{path}:6" in log.problems[0]


def test_unwritable_logdir_fails_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LogError, match="cannot write the gradscope log"):
        LogWriter(blocker / "sub" / "gradscope.rank0.jsonl")


def test_log_files_are_ordered_by_rank(tmp_path: Path) -> None:
    for r in (10, 0, 2):
        log_path(tmp_path, r).write_text("")
    (tmp_path / "gradscope.rankX.jsonl").write_text("")
    assert [p.name for p in log_files(tmp_path)] == [
        "gradscope.rank0.jsonl", "gradscope.rank2.jsonl", "gradscope.rank10.jsonl"]
