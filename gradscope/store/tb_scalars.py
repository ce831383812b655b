"""The user's own TensorBoard scalars, read without TensorFlow or torch.

Why: a run that never used ``gradscope.watch`` (or logged its losses only to TensorBoard) should still get a
bias/variance and over/underfitting verdict. So ``gradscope report`` reads the scalar summaries in the
``events.out.tfevents.*`` files of a run folder and maps the usual tag spellings onto the metric names the fit
rules read (``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``, ``train_error``, ``val_error``).

How: event files are TFRecord files (``uint64 length, uint32 masked crc32c(length), data, uint32 crc``) of
``Event`` protocol buffers. We frame the records ourselves and parse them with tensorboard's generated
``event_pb2`` (about 50 ms to import), instead of ``EventFileLoader`` (about 0.3 s, and it pulls in the
tensorflow stub); neither imports torch. Framing ourselves also lets a truncated or corrupt file produce a
warning naming the file while everything before the damage is kept (TensorBoard's reader stops silently).

Both scalar encodings are read: ``simple_value`` (what ``torch.utils.tensorboard.SummaryWriter.add_scalar``
writes by default) and tensor-based scalars (``add_scalar(..., new_style=True)``, TF2 ``tf.summary.scalar``):
a 0-d float/int tensor whose tag carries the ``scalars`` plugin metadata (or no plugin metadata at all).

Tag mapping (``canonical_metrics``), case-insensitive. A tag is split into words on ``/ _ - .`` and spaces:

* exactly one *metric* word: ``loss`` → loss; ``acc``, ``accuracy`` → acc; ``err``, ``error`` → error;
* at most one *split* word: ``train``, ``training``, ``trn`` → train; ``val``, ``valid``, ``validation``,
  ``eval``, ``evaluation``, ``dev``, ``holdout`` → val; ``test`` → val, used only when no other validation
  tag of that metric exists; no split word → train (``loss`` and Keras' ``accuracy`` are training values);
* any other words must be modifiers: ``epoch``, ``step``, ``avg``, ``mean``, ``total``, ``overall``
  (Lightning's ``train_loss_epoch``, Keras' ``epoch_loss``); a tag with any other word (``aux_loss``,
  ``loss/train/layer3``, ``lr``) is not mapped.

Examples: ``loss/train``, ``train/loss``, ``Loss/train``, ``train_loss``, ``training_loss``, ``loss`` →
``train_loss``; ``Loss/val``, ``val/loss``, ``val_loss``, ``validation_loss``, ``loss/valid``, ``eval/loss``
→ ``val_loss``; ``accuracy/val``, ``val_acc``, ``val/accuracy``, ``acc/val``, ``eval/accuracy`` →
``val_acc``; ``train_acc``, ``accuracy/train`` → ``train_acc``; ``val_error``, ``error/train`` → ``*_error``.
When several tags map to one name, the plain one wins over an ``epoch`` one, which wins over a ``step`` one,
and an explicit split word wins over none. Accuracies and errors logged in percent (any value above 1) are
divided by 100.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.errors import GradscopeWarning
from gradscope.store import validate
from gradscope.store.run import Series

EVENT_FILE_MARKER = "events.out.tfevents."
GRADSCOPE_EVENT_FILE_SUFFIX = ".gradscope"
"""``SummaryWriter(filename_suffix=...)`` of gradscope's own TensorBoard writer: files ending with it hold
only gradscope's mirror of the log and are not read here at all (a long run writes millions of events)."""

GRADSCOPE_TAG_PREFIXES: tuple[str, ...] = (
    "gradscope/",
    "grad_norm/",
    "grad_norm_total",
    "act_std/",
    "dead_pct/",
    "saturation_pct/",
    "update_ratio/",
)
"""Tags gradscope itself writes to TensorBoard. They are skipped here: they are not the user's metrics, and
the log already holds the same numbers. The TensorBoard writer imports this tuple so the two cannot drift."""

_METRIC_WORDS = {"loss": "loss", "acc": "acc", "accuracy": "acc", "err": "error", "error": "error"}
_SPLIT_WORDS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "eval": "val", "evaluation": "val", "dev": "val",
    "holdout": "val", "test": "val",
}
_MODIFIER_RANK = {"epoch": 1, "step": 3, "avg": 2, "mean": 2, "total": 2, "overall": 2}
_WORD_SPLIT = re.compile(r"[/_\-.\s]+")


# --- TFRecord framing -------------------------------------------------------------------------------------

MAX_EVENT_RECORD_BYTES = 2**20
"""Largest event record parsed (1 MiB). A scalar event is about 50 bytes; a larger record is an image, a
histogram, an audio clip or a mesh (or a damaged length), and is skipped by seeking past it, never read."""

MAX_EVENT_FILE_BYTES = 2**30
"""Most bytes of records read from one event file (1 GiB, about 20 million scalar events; skipped large
records do not count). Past it reading stops with a problem line: a report must not take hours, and
records are read one at a time, so memory never holds the file."""

_CRC32C_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C. Only used on the 8-byte length field: a flipped length would otherwise
    send the reader seeking to a wrong place (or past a 4 GB end) and parse garbage from there."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_HEAD = struct.Struct("<QI")


def _records(path: Path, problems: list[str]) -> Iterator[bytes]:
    """The intact records of one TFRecord file, read one at a time; the first damage ends it and is noted in
    ``problems``, as is stopping at ``MAX_EVENT_FILE_BYTES``; records over ``MAX_EVENT_RECORD_BYTES`` are
    skipped unread.

    The length field's checksum is verified (8 bytes, cheap); the payload's is not: in pure Python that is
    most of the read time of a long run (about 2 µs a record), and damage there still shows as a payload
    protobuf cannot parse, which the caller reports.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n, pos, read = 0, 0, 0
        while pos < size:
            head = f.read(12)
            if len(head) < 12:
                problems.append(f"{path}: truncated event record #{n + 1} (the writer was cut off); "
                                f"kept the {n} records before it")
                return
            length, length_crc = _HEAD.unpack(head)
            if _masked_crc32c(head[:8]) != length_crc:
                problems.append(f"{path}: corrupt event record #{n + 1} (its length fails its checksum); "
                                f"kept the {n} records before it")
                return
            end = pos + 12 + length + 4
            if end > size:
                problems.append(f"{path}: truncated or corrupt event record #{n + 1}; "
                                f"kept the {n} records before it")
                return
            if length > MAX_EVENT_RECORD_BYTES:
                f.seek(end)
            else:
                if read + length > MAX_EVENT_FILE_BYTES:
                    problems.append(f"{path}: more than {MAX_EVENT_FILE_BYTES} bytes of events; read the first "
                                    f"{n} records only")
                    return
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)
                if len(data) < length:   # the file shrank while we read it
                    problems.append(f"{path}: truncated event record #{n + 1}; kept the {n} records before it")
                    return
                read += length
                yield data
            n += 1
            pos = end


# --- scalars -----------------------------------------------------------------------------------------------

def event_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The event files directly in ``run_dir`` (not its subfolders), oldest first (names hold the time)."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    files = [p for p in d.iterdir() if p.name.startswith(EVENT_FILE_MARKER)
             and not p.name.endswith(GRADSCOPE_EVENT_FILE_SUFFIX) and p.is_file()]
    # Natural order: ``events.out.tfevents.<time>.<host>.<pid>.<counter>``, and counter 10 comes after 9.
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def is_gradscope_tag(tag: str) -> bool:
    return tag.startswith(GRADSCOPE_TAG_PREFIXES)


def read_scalars(run_dir: str | os.PathLike[str], *, warn: bool = True,
                 problems_out: list[str] | None = None) -> dict[str, Series]:
    """Every scalar tag of the user's in ``run_dir``'s event files, as ``Series`` sorted by step.

    A step written twice (a resumed run, a second event file) keeps the later value. Tags gradscope writes
    itself (``GRADSCOPE_TAG_PREFIXES``) are skipped. A truncated or corrupt file gives one
    ``GradscopeWarning`` naming it (when ``warn``), and the records before the damage are kept; the same lines
    are appended to ``problems_out`` when given (the loader puts them into the run's problems).
    """
    files = event_files(run_dir)
    if not files:
        return {}
    # Imported here: only runs with event files pay for protobuf (and `import gradscope.store.run` stays light).
    from tensorboard.compat.proto import types_pb2

    float_types = {types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16}
    int_types = {types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_INT16, types_pb2.DT_INT8,
                 types_pb2.DT_UINT8}
    plugin_of: dict[str, str] = {}
    points: dict[str, dict[int, float]] = {}
    problems = validate.ProblemList()
    for path in files:
        try:
            _read_file(path, problems, points, plugin_of, float_types, int_types)
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror or e})")
    lines = problems.close(Path(run_dir))
    if problems_out is not None:
        problems_out.extend(lines)
    if warn:
        for msg in lines:
            warnings.warn(f"gradscope: {msg}", GradscopeWarning, stacklevel=2)
    out: dict[str, Series] = {}
    for tag, by_step in sorted(points.items()):
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[int(s)] for s in steps], dtype=float)
        out[tag] = Series(steps, values, f"tensorboard:{tag}")
    return out


def _read_file(path: Path, problems: list[str], points: dict[str, dict[int, float]], plugin_of: dict[str, str],
               float_types: set[int], int_types: set[int]) -> None:
    """The scalars of one event file into ``points`` (tag → step → value)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    for i, rec in enumerate(_records(path, problems), start=1):
            if _gradscope_only(rec):
                continue
            try:
                event = event_pb2.Event.FromString(rec)
            except DecodeError:
                problems.append(f"{path}: corrupt event record #{i}; skipped")
                continue
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                tag = v.tag
                if is_gradscope_tag(tag):
                    continue
                if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
                    plugin_of[tag] = v.metadata.plugin_data.plugin_name
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    x = float(v.simple_value)
                elif kind == "tensor" and plugin_of.get(tag, "scalars") == "scalars":
                    t = v.tensor
                    if t.tensor_shape.dim and int(np.prod([d.size for d in t.tensor_shape.dim])) != 1:
                        continue
                    x_opt = _tensor_scalar(t, float_types, int_types)
                    if x_opt is None:
                        continue
                    x = x_opt
                else:
                    continue
                points.setdefault(tag, {})[int(event.step)] = x


_GRADSCOPE_PREFIX_BYTES = tuple(p.encode() for p in GRADSCOPE_TAG_PREFIXES)


def _gradscope_only(rec: bytes) -> bool:
    """True when ``rec`` is certainly one summary value under a gradscope tag, decided from the bytes.

    gradscope's own TensorBoard mirror can hold millions of scalar events; parsing each as a protobuf costs
    more than the rest of ``gradscope report``. Event wire layout (one value, as SummaryWriter writes it):
    ``09 <wall_time:8>  10 <step:varint>  2a <len> [ 0a <len> [ 0a <len> <tag> ... ] ]`` (the step is
    omitted when 0). Anything that does not match exactly is parsed the slow, sure way.
    """
    pos = 9 if rec[:1] == b"\x09" else 0
    if rec[pos:pos + 1] == b"\x10":
        pos += 1
        while pos < len(rec) and rec[pos] & 0x80:
            pos += 1
        pos += 1
    if rec[pos:pos + 1] != b"\x2a" or pos + 2 >= len(rec) or rec[pos + 1] & 0x80:
        return False
    summary_len, pos = rec[pos + 1], pos + 2
    if rec[pos:pos + 1] != b"\x0a" or rec[pos + 1] & 0x80 or rec[pos + 1] + 2 != summary_len:
        return False   # more than one value (or a long one): parse it
    pos += 2
    if rec[pos:pos + 1] != b"\x0a" or rec[pos + 1] & 0x80:
        return False
    return rec[pos + 2:pos + 2 + rec[pos + 1]].startswith(_GRADSCOPE_PREFIX_BYTES)


def _tensor_scalar(t: Any, float_types: set[int], int_types: set[int]) -> float | None:
    """The value of a one-element ``TensorProto`` (typed fields first, then the packed bytes)."""
    if t.dtype in float_types:
        for vals in (t.float_val, t.double_val):
            if vals:
                return float(vals[0])
        np_type = {1: np.float32, 2: np.float64, 19: np.float16}.get(t.dtype)
        if t.half_val and np_type is np.float16:
            return float(np.array([t.half_val[0]], dtype=np.uint16).view(np.float16)[0])
        if np_type is not None and len(t.tensor_content) >= np.dtype(np_type).itemsize:
            return float(np.frombuffer(t.tensor_content, dtype=np_type, count=1)[0])
        return None
    if t.dtype in int_types:
        for vals in (t.int_val, t.int64_val):
            if vals:
                return float(vals[0])
    return None


# --- canonical names ---------------------------------------------------------------------------------------

def classify_tag(tag: str) -> tuple[str, int] | None:
    """(canonical name, preference: lower is better) for a tag the fit rules can use, else None."""
    words = [w for w in _WORD_SPLIT.split(tag.lower()) if w]
    metric: str | None = None
    split: str | None = None
    split_word = ""
    modifier_rank = 0
    for w in words:
        if w in _METRIC_WORDS:
            if metric is not None:
                return None
            metric = _METRIC_WORDS[w]
        elif w in _SPLIT_WORDS:
            if split is not None:
                return None
            split, split_word = _SPLIT_WORDS[w], w
        elif w in _MODIFIER_RANK:
            modifier_rank = max(modifier_rank, _MODIFIER_RANK[w])
        else:
            return None
    if metric is None:
        return None
    # Preference: an explicit split word beats none; "test" is a stand-in for validation only when nothing
    # better exists; then plain < epoch < avg/mean < step.
    pref = modifier_rank + (10 if split is None else 0) + (20 if split_word == "test" else 0)
    return f"{split or 'train'}_{metric}", pref


def canonical_metrics(scalars: dict[str, Series]) -> dict[str, Series]:
    """The fit rules' metric names (``train_loss`` ... ``val_error``) from the user's tags; see the module
    docstring for the mapping. Percent accuracies/errors become fractions; the ``source`` keeps the tag."""
    best: dict[str, tuple[int, str]] = {}
    for tag in scalars:
        if is_gradscope_tag(tag):
            continue
        c = classify_tag(tag)
        if c is None:
            continue
        name, pref = c
        if name not in best or (pref, tag) < best[name]:
            best[name] = (pref, tag)
    out: dict[str, Series] = {}
    for name, (_, tag) in sorted(best.items()):
        s = scalars[tag]
        values = s.values
        if not name.endswith("_loss"):
            finite = values[np.isfinite(values)]
            if finite.size and float(finite.max()) > 1.0:
                values = values / 100.0
        out[name] = Series(s.steps, values, f"tensorboard:{tag}")
    return out
