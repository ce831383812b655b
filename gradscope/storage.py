"""The run log on disk: an append-only JSON Lines writer and a reader that survives damage.

Why JSON Lines and not TensorBoard events or a pickle: one record per line, flushed as it is written, so a
killed process loses at most the line it was writing; a damaged line is skipped with a warning naming the
file and line and every other record is still read (TensorBoard's reader silently stops at the first bad
record); and it is plain data, never unpickled. No torch import here.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gradscope.errors import GradscopeWarning, LogError
from gradscope.records import (
    LOG_FILE_PREFIX,
    LOG_FILE_SUFFIX,
    SCHEMA_VERSION,
    CloseRecord,
    Header,
    MetricsRecord,
    NonFiniteRecord,
    StepRecord,
)

_RANK_FILE = re.compile(rf"^{LOG_FILE_PREFIX}\.rank(\d+){re.escape(LOG_FILE_SUFFIX)}$")


def log_path(logdir: str | os.PathLike[str], rank: int = 0) -> Path:
    """Where rank ``rank`` of a run in ``logdir`` writes: ``LOGDIR/gradscope.rank0.jsonl``."""
    return Path(logdir) / f"{LOG_FILE_PREFIX}.rank{rank}{LOG_FILE_SUFFIX}"


def log_files(logdir: str | os.PathLike[str]) -> list[Path]:
    """The per-rank log files directly inside ``logdir``, ordered by rank."""
    d = Path(logdir)
    found = []
    for p in d.iterdir() if d.is_dir() else ():
        m = _RANK_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


class LogWriter:
    """Appends records, one JSON object per line, flushed per record.

    Opening happens at attach time so an unwritable logdir fails before training starts, not mid-run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                warnings.warn(f"gradscope: replacing the earlier log {path}", GradscopeWarning, stacklevel=3)
            self._f: IO[str] | None = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise LogError(f"cannot write the gradscope log {path}: {e.strerror or e}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        # allow_nan=False: records are sanitized to null before this point; a NaN here is a bug, not data.
        self._f.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    @property
    def closed(self) -> bool:
        return self._f is None


@dataclass
class RawLog:
    """Every intact record of one log file, in order, plus what was wrong with the rest."""

    path: Path
    header: Header
    activations: dict[str, str] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    metrics: list[MetricsRecord] = field(default_factory=list)
    nonfinite: list[NonFiniteRecord] = field(default_factory=list)
    close: CloseRecord | None = None
    grad_norms: list[tuple[int, float | None]] = field(default_factory=list)   # steps after the last record
    problems: list[str] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, complete) for each line; the last is incomplete when the writer was cut off."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            yield i, line, line.endswith("\n")


def read_log(path: str | os.PathLike[str], *, warn: bool = True) -> RawLog:
    """Read one log file. A damaged record is skipped with a warning naming ``path:line``.

    Raises ``LogError`` (one line, with the path) when nothing usable is there: a missing or empty file, no
    header, or a schema newer than this reader.
    """
    p = Path(path)
    if not p.is_file():
        raise LogError(f"{p}: no such log file")
    header: Header | None = None
    log: RawLog | None = None
    problems: list[str] = []
    for lineno, text, complete in _lines(p):
        if not text.strip():
            continue
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            kind = d.get("kind")
            if header is None:
                if kind != "header":
                    raise LogError(f"{p}:{lineno}: the first record is {kind!r}, not a gradscope header")
                schema = int(d.get("schema", -1))
                if schema > SCHEMA_VERSION:
                    raise LogError(f"{p}: log schema {schema} is newer than this gradscope understands "
                                   f"({SCHEMA_VERSION}); upgrade gradscope")
                header = Header.from_dict(d)
                log = RawLog(path=p, header=header)
                continue
            assert log is not None
            if kind == "step":
                log.steps.append(StepRecord.from_dict(d))
            elif kind == "metrics":
                log.metrics.append(MetricsRecord.from_dict(d))
            elif kind == "activations":
                log.activations.update({str(k): str(v) for k, v in d.get("acts", {}).items()})
            elif kind == "nonfinite":
                log.nonfinite.append(NonFiniteRecord.from_dict(d))
            elif kind == "grad_norms":
                log.grad_norms.extend((int(st), v) for st, v in d.get("steps", ()))
            elif kind == "close":
                log.close = CloseRecord.from_dict(d)
            # Unknown kinds are from a newer writer of the same schema: skip them quietly.
        except LogError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            why = "truncated record (the writer was cut off)" if not complete else f"corrupt record ({_short(e)})"
            problems.append(f"{p}:{lineno}: {why}; skipped")
    if header is None or log is None:
        raise LogError(f"{p}: empty log, no gradscope header" if not problems else problems[0])
    log.problems = problems
    if warn:
        for msg in problems:
            warnings.warn(f"gradscope: {msg}", GradscopeWarning, stacklevel=2)
    return log


def _short(e: Exception) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[:120]
