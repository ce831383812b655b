"""The run log on disk: an append-only JSON Lines writer and a reader that survives damage.

Why JSON Lines and not TensorBoard events or a pickle: one record per line, flushed as it is written, so a
killed process loses at most the line it was writing; a damaged line is skipped with a warning naming the
file and line and every other record is still read (TensorBoard's reader silently stops at the first bad
record); and it is plain data, never unpickled. No torch import here.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np

from gradscope.errors import GradscopeWarning, LogError
from gradscope.store import validate
from gradscope.store.schema import (
    LOG_FILE_PREFIX,
    LOG_FILE_SUFFIX,
    SCHEMA_VERSION,
    CloseRecord,
    Header,
    InputStats,
    LoopRecord,
    MetricsRecord,
    NonFiniteRecord,
    StepRecord,
)
from gradscope.store.validate import MAX_LINE_BYTES

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


RUN_FOLDER_PREFIX = "run-"
"""A second writer on a logdir whose log is held by a live writer goes to ``LOGDIR/run-2/``, then ``run-3/``...
(like TensorBoard's per-run subfolders); ``load`` finds each as its own run."""

MAX_RUN_FOLDERS = 1000
"""``LogWriter.open`` gives up (``LogError``) after this many busy run folders: something is looping."""

try:   # POSIX advisory locks; without them (Windows) two live writers are not detected
    import fcntl as _fcntl
except ImportError:   # pragma: no cover - not POSIX
    _fcntl = None  # type: ignore[assignment]

_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))
"""Create or open for writing without truncating (truncation waits until the lock is ours), never through
a symlink planted at the log path, and non-blocking so a FIFO planted there fails instead of hanging."""


class LogBusyError(LogError):
    """The log path is taken: another live writer holds it, or something other than a regular file (a
    symlink, a FIFO, a folder) sits there. ``LogWriter.open`` moves on to a ``run-N`` folder on this error."""


class LogWriter:
    """Appends records, one JSON object per line, flushed per record; the only writer of its file.

    One writer per log: the file is opened without following a symlink (``O_NOFOLLOW``), must be a regular
    file, and is held under an exclusive advisory ``flock`` for as long as it is open, so two watches on the
    same logdir and rank (two processes, or one process twice) cannot interleave or truncate each other.
    ``LogWriter.open(logdir, rank)`` is what the watch uses: when a live writer holds
    ``LOGDIR/gradscope.rank{R}.jsonl``, the new run is written to ``LOGDIR/run-2/`` (then ``run-3/``, ...)
    with one ``GradscopeWarning``, and ``.path`` says where. Training must not die because of its observer,
    and ``gradscope report LOGDIR`` then shows both runs (the loader reads subfolders as separate runs).
    A finished log (no live writer) at the path is replaced, with a ``GradscopeWarning`` naming it: re-running
    a script on the same logdir is the common case, and the warning means it is never done silently.

    ``LogWriter(path)`` writes exactly at ``path`` and raises ``LogBusyError`` when it is taken.

    Opening happens at attach time so an unwritable logdir fails (``LogError``) before training starts, not
    mid-run. After that nothing raises: an ``OSError`` while writing (disk full, a vanished network mount)
    stops the log with one ``GradscopeWarning``, keeps every line written before, and ``close()`` succeeds.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.failed = False
        """True once a write failed: the log ends there and later records are dropped."""
        self._f: IO[str] | None = self._open_exclusive(self.path)

    @classmethod
    def open(cls, logdir: str | os.PathLike[str], rank: int = 0) -> LogWriter:
        """The writer of rank ``rank``'s log in ``logdir``, or in the first free ``run-N`` subfolder when a
        live writer (or a symlink, a FIFO...) holds it; ``.path`` is where it writes. Raises ``LogError``
        only when nothing can be written (an unwritable logdir)."""
        root = Path(logdir)
        first = log_path(root, rank)
        try:
            return cls(first)
        except LogBusyError as e:
            reason = str(e)
        for n in range(2, MAX_RUN_FOLDERS + 1):
            path = log_path(root / f"{RUN_FOLDER_PREFIX}{n}", rank)
            try:
                w = cls(path)
            except LogBusyError:
                continue
            warnings.warn(f"gradscope: {reason}; this run writes its log to {path} instead",
                          GradscopeWarning, stacklevel=2)
            return w
        raise LogError(f"cannot write the gradscope log in {root}: {reason}, and so are "
                       f"{RUN_FOLDER_PREFIX}2..{MAX_RUN_FOLDERS}")

    @staticmethod
    def _open_exclusive(path: Path) -> IO[str]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists() or path.is_symlink()
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.ETXTBSY, errno.EAGAIN):
                raise LogBusyError(f"{path} is not a regular file a log can be written to "
                                   f"({e.strerror or e}); not following or replacing it") from None
            raise LogError(f"cannot write the gradscope log {path}: {e.strerror or e}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LogBusyError(f"{path} is not a regular file; not writing into it")
            if _fcntl is not None:
                try:
                    _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LogBusyError(f"{path} is being written by another gradscope watch") from None
            os.set_blocking(fd, True)
            if existed and os.fstat(fd).st_size > 0:
                warnings.warn(f"gradscope: replacing the earlier log {path}", GradscopeWarning, stacklevel=4)
            os.ftruncate(fd, 0)   # only now, with the lock held: a live writer's log is never cut
            return os.fdopen(fd, "w", encoding="utf-8")
        except LogError:
            os.close(fd)
            raise
        except OSError as e:
            os.close(fd)
            raise LogError(f"cannot write the gradscope log {path}: {e.strerror or e}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record. Never raises ``OSError``: a failed write ends the log (see the class)."""
        if self._f is None:
            return
        # allow_nan=False: records are sanitized to null before this point; a NaN here is a bug, not data.
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            self._f.write(line)
            self._f.flush()
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        self.failed = True
        f, self._f = self._f, None
        try:
            if f is not None:
                f.close()   # flushes what is buffered (may fail again) and always releases the fd and lock
        except OSError:
            pass
        warnings.warn(f"gradscope: writing the log {self.path} failed ({e.strerror or e}); the log stops "
                      "here, training continues", GradscopeWarning, stacklevel=3)

    def close(self) -> None:
        """Close the file and release the lock; idempotent, and never raises ``OSError``."""
        if self._f is not None:
            try:
                self._f.close()
            except OSError as e:
                self._f = None
                self.failed = True
                warnings.warn(f"gradscope: closing the log {self.path} failed ({e.strerror or e}); its last "
                              "record may be cut", GradscopeWarning, stacklevel=2)
            self._f = None

    @property
    def closed(self) -> bool:
        return self._f is None


@dataclass
class StepMeta:
    """A step record without its rows (those are in ``RawLog.layer_array`` / ``param_array``)."""

    step: int
    time: float
    grad_norm: float | None
    grad_norm_steps: tuple[tuple[int, float | None], ...]
    lr: tuple[float, ...]
    input: InputStats | None
    skipped: bool
    clip_norm: float | None = None   # grad norm at optimizer-step time


@dataclass
class RawLog:
    """Every intact record of one log file, in order, plus what was wrong with the rest.

    Step rows are kept as arrays, ``layer_array[s, layer, field]`` and ``param_array[s, param, field]``
    (float32 values held as float64, the type the rules compute in; NaN = missing): building Python tuples
    for 200 layers × 10,000 steps took longer than the whole report may. ``read_log`` makes them views of
    field-major arrays (``layer_array.transpose(2, 0, 1)`` is C-contiguous), so each statistic is one
    contiguous block. ``steps`` gives them as ``StepRecord`` objects on demand.
    """

    path: Path
    header: Header
    activations: dict[str, str] = field(default_factory=dict)
    step_meta: list[StepMeta] = field(default_factory=list)
    layer_array: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    param_array: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    metrics: list[MetricsRecord] = field(default_factory=list)
    nonfinite: list[NonFiniteRecord] = field(default_factory=list)
    close: CloseRecord | None = None
    grad_norms: list[tuple[int, float | None]] = field(default_factory=list)   # steps after the last record
    problems: list[str] = field(default_factory=list)
    loops: list[LoopRecord] = field(default_factory=list)   # ``loop`` records, in step order, not overlapping

    @cached_property
    def steps(self) -> list[StepRecord]:
        return [StepRecord(step=m.step, time=m.time, layers=_rows(self.layer_array[i]),
                           params=_rows(self.param_array[i]), grad_norm=m.grad_norm,
                           grad_norm_steps=m.grad_norm_steps, lr=m.lr, input=m.input, skipped=m.skipped,
                           clip_norm=m.clip_norm)
                for i, m in enumerate(self.step_meta)]


def _rows(a: np.ndarray) -> tuple[tuple[float | None, ...] | None, ...]:
    out = []
    for r in a.tolist():
        row = tuple(None if v != v else v for v in r)   # v != v: NaN
        out.append(None if all(v is None for v in row) else row)
    return tuple(out)


_READ_BUFFER = 2**20
"""Read buffer of a log file (at most; a smaller file gets its size): with the default 8 KiB one, every 22 KB
step line of a 200-layer log took several reads and joins (a third of a second on a 225 MB log)."""


def _lines(path: Path) -> Iterator[tuple[int, str | None, bool]]:
    """(line number, text, complete) for each line, read in bounded pieces: a line longer than
    ``MAX_LINE_BYTES`` is skipped without being held (text None). The last line is incomplete when the writer
    was cut off. Invalid UTF-8 is replaced (U+FFFD), so only JSON decides what is damaged."""
    buffering = max(io.DEFAULT_BUFFER_SIZE, min(_READ_BUFFER, path.stat().st_size))
    with open(path, "rb", buffering=buffering) as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while True:   # skip the rest of this line, a MiB at a time
                    chunk = f.readline(2**20)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                yield lineno, None, True
                continue
            yield lineno, raw.decode("utf-8", "replace"), raw.endswith(b"\n")


def _records(p: Path, problems: validate.ProblemList) -> Iterator[tuple[int, dict[str, Any], bool]]:
    """The JSON objects of the file with their line numbers; lines that are too long, too deep, not JSON or
    not an object become problems here, before any of their content is used."""
    for lineno, line, complete in _lines(p):
        if line is None:
            problems.append(f"{p}:{lineno}: record longer than {MAX_LINE_BYTES} bytes; skipped unread")
            continue
        if line[:1] != "{" and not line.strip():   # (strip() copies the line: only when it may be blank)
            continue
        why: str
        if validate.too_deep(line):
            why = f"record nested deeper than {validate.MAX_DEPTH} levels"
        else:
            try:
                d = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = f"corrupt record ({_short(e)})"
            else:
                if isinstance(d, dict):
                    yield lineno, d, complete
                    continue
                why = f"corrupt record (a JSON {type(d).__name__}, not an object)"
        if not complete:
            why = "truncated record (the writer was cut off)"
        problems.append(f"{p}:{lineno}: {why}; skipped")


_AFTER_SECOND_HEADER = validate.MAX_STEP + 1
"""The last step seen, once a second header was met: every later step record is then reported, none merged
into the first run."""


def read_log(path: str | os.PathLike[str], *, warn: bool = True) -> RawLog:
    """Read one log file, checking every record against the schema before using it.

    A damaged or invalid record (cut off, not JSON, longer than ``MAX_LINE_BYTES``, nested deeper than
    ``MAX_DEPTH``, a value of the wrong type or range, rows of another size than the header says) is skipped
    with a problem naming ``path:line`` and why (a ``GradscopeWarning`` too, when ``warn``); every other
    record is read. Also problems, never merged silently: a second header, a step record whose step is not
    after the previous one, a ``loop`` record overlapping the previous one, a second close record, an unknown
    record kind (noted once per kind). ``problem``
    records (the watch caught a failure of its own) become problem lines too. Memory stays within a small
    multiple of the file's size: nothing is allocated from a size before the size is checked.

    Raises ``LogError`` (one line, with the path) when nothing usable is there: a missing or empty file, no
    valid header, or a schema newer than this reader.
    """
    p = Path(path)
    if not p.is_file():
        raise LogError(f"{p}: no such log file")
    log: RawLog | None = None
    problems = validate.ProblemList()
    # Step rows go straight into two growing byte buffers (float32, row-major, exactly the header's size per
    # record, checked): one array over each at the end, instead of an array per record and a stack.
    layer_buf = bytearray()
    param_buf = bytearray()
    unknown: set[str] = set()
    last_step = -1
    cols: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    try:
        for lineno, d, complete in _records(p, problems):
            where = f"{p}:{lineno}"
            try:
                kind = d.get("kind")
                if not isinstance(kind, str):
                    raise validate.BadRecord(f"'kind' is {validate.kind_of(kind)}, not a string")
                if log is None:
                    if kind != "header":
                        raise LogError(f"{where}: the first record is {validate.text(kind, 'kind')[:40]!r}, "
                                       "not a gradscope header")
                    schema = d.get("schema")
                    if isinstance(schema, int) and schema > SCHEMA_VERSION:
                        raise LogError(f"{p}: log schema {validate.short_num(schema)} is newer than this "
                                       f"gradscope understands ({SCHEMA_VERSION}); upgrade gradscope")
                    try:
                        header = validate.header(d)
                    except validate.BadRecord as e:
                        raise LogError(f"{where}: invalid gradscope header ({_short(e)})") from None
                    log = RawLog(path=p, header=header)
                    cols = (header.layer_fields, header.param_fields)
                elif kind == "step":
                    s = validate.step(d.get("step"))
                    if s <= last_step:
                        problems.append(f"{where}: step {s} does not follow step "
                                        f"{last_step if last_step <= validate.MAX_STEP else 'of the first run'} "
                                        "(a duplicate or backward step); skipped")
                        continue
                    meta, la, pa = _step(d, s, log.header, cols)
                    layer_buf += la
                    param_buf += pa
                    log.step_meta.append(meta)
                    last_step = s
                elif kind == "loop":
                    loop = validate.loop(d)
                    if (log.loops and loop.from_step <= log.loops[-1].step) or last_step > validate.MAX_STEP:
                        problems.append(f"{where}: loop record of steps {loop.from_step}..{loop.step} overlaps an "
                                        "earlier one (or follows a second header); skipped")
                        continue
                    log.loops.append(loop)
                elif kind == "metrics":
                    log.metrics.append(validate.metrics(d))
                elif kind == "activations":
                    log.activations.update(validate.activations(d))
                elif kind == "nonfinite":
                    log.nonfinite.append(validate.nonfinite(d))
                elif kind == "grad_norms":
                    log.grad_norms.extend(validate.step_norms(d.get("steps", []), "steps"))
                elif kind == "close":
                    if log.close is not None:
                        problems.append(f"{where}: a second close record; skipped")
                        continue
                    log.close = validate.close(d)
                elif kind == "problem":
                    problems.append(f"{where}: {validate.problem(d)}")
                elif kind == "header":
                    problems.append(f"{where}: a second header (two runs written into one file?); the steps "
                                    "after it are not merged into the first run's")
                    last_step = _AFTER_SECOND_HEADER
                elif kind not in unknown and len(unknown) < validate.MAX_PROBLEMS:
                    unknown.add(kind)
                    problems.append(f"{where}: unknown record kind {validate.text(kind, 'kind')[:40]!r} (from a "
                                    "newer gradscope?); records of this kind skipped")
            except validate.BadRecord as e:
                why = "truncated record (the writer was cut off)" if not complete else f"invalid record ({_short(e)})"
                problems.append(f"{where}: {why}; skipped")
    except OSError as e:
        raise LogError(f"{p}: cannot read ({e.strerror or e})") from None
    if log is None:
        raise LogError(f"{p}: empty log, no gradscope header" if not problems else problems[0])
    log.problems = problems.close(p)
    h = log.header
    n = len(log.step_meta)
    log.layer_array = _array(layer_buf, (n, len(h.layers), len(h.layer_fields)), h.layer_fields)
    del layer_buf
    log.param_array = _array(param_buf, (n, len(h.params), len(h.param_fields)), h.param_fields)
    del param_buf
    if warn:
        for msg in log.problems:
            warnings.warn(f"gradscope: {msg}", GradscopeWarning, stacklevel=2)
    return log


_BLOCK_STEPS = 256
"""Steps turned field-major at a time: the block being read stays in cache (2x faster than one transpose)."""


def _array(buf: bytearray, shape: tuple[int, int, int], fields: tuple[str, ...]) -> np.ndarray:
    """The step rows of the whole log, ``[step, layer|param, field]``, from their float32 bytes (``buf``,
    record after record): float64 values, out-of-range ones NaN (``validate.clamp_column``), in one
    field-major array (``[field, step, layer|param]``, C order) seen through a transposed view. Each
    statistic is then one contiguous block: ``run_from_log`` takes it as a column without another copy, and
    the rules scan it 2.5x faster than a strided column. The only copy of the rows made after reading."""
    rows = np.frombuffer(buf, dtype="<f4").reshape(shape)
    n, width = shape[0], shape[2]
    cols = np.empty((width, n, shape[1]), dtype=np.float64)
    for s0 in range(0, n, _BLOCK_STEPS):
        cols[:, s0:s0 + _BLOCK_STEPS] = rows[s0:s0 + _BLOCK_STEPS].transpose(2, 0, 1)
    del rows
    for j, f in enumerate(fields):
        validate.clamp_column(cols[j], f)
    return cols.transpose(1, 2, 0)


def _step(d: dict[str, Any], s: int, h: Header,
          cols: tuple[tuple[str, ...], tuple[str, ...]]) -> tuple[StepMeta, bytes, bytes]:
    """A step record, checked: its rows against the header's layer and parameter counts and columns (as
    float32 bytes, range-checked later for the whole log by ``_array``), every other field by type and
    range. Nothing is kept from a record that fails any check."""
    la = validate.row_bytes(d.get("layers", []), len(h.layers), len(cols[0]), "layers")
    pa = validate.row_bytes(d.get("params", []), len(h.params), len(cols[1]), "params")
    inp = d.get("input")
    meta = StepMeta(step=s, time=validate.finite(d.get("time", 0.0), "time"),
                    grad_norm=validate.nonneg(d.get("grad_norm"), "grad_norm"),
                    grad_norm_steps=validate.step_norms(d.get("grad_norm_steps", []), "grad_norm_steps"),
                    lr=validate.learning_rates(d.get("lr", [])),
                    input=None if inp is None else validate.input_stats(inp),
                    skipped=validate.boolean(d.get("skipped", False), "skipped"),
                    clip_norm=validate.nonneg(d.get("clip_norm"), "clip_norm"))
    return meta, la, pa


def _short(e: Exception) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[:120]
