"""Checks every record of a log against the schema before anything is built from it. No torch.

Why: a log is input from outside (sent by a colleague, copied from a cluster, cut off by a crash), and the
reader used to trust it: sizes in a record were used before they were checked (a 0.46 MB crafted log made the
reader allocate 1.2 GB), a step of ``1e999`` raised ``OverflowError`` deep in the rules, and a lone surrogate
in a layer name raised ``UnicodeEncodeError`` when the report was printed. Here every value is checked for
its type, range and size (against the header) and turned into a plain, well-formed Python value, or the
record is refused with a ``BadRecord`` saying why, which the reader turns into a ``file:line`` problem.

The bounds are named constants below; docs/log-format.md ("Reading untrusted logs") lists them.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.store.schema import (
    LAYER_FIELDS,
    PARAM_FIELDS,
    CloseRecord,
    Header,
    InputStats,
    LayerInfo,
    LoopRecord,
    MetricsRecord,
    NonFiniteRecord,
    ParamInfo,
)

MAX_LINE_BYTES = 8 * 2**20
"""Longest record line read (8 MiB); a longer line is skipped unread. The largest real records are a few
hundred KB: a header of a model with thousands of parameter tensors, or a step record of 5,000 layers (about
70 bytes a layer, packed)."""

MAX_DEPTH = 32
"""Deepest JSON nesting of a record. Real records nest at most 6 levels (the header's optimizer groups);
deeper is damage or an attack on the parser's recursion."""

MAX_FIELDS = 64
"""Most column names in the header's ``layer_fields`` / ``param_fields``: 13 and 4 today; a row of a step
record is allocated with this width, so it must be bounded before any step is read."""

MAX_STEP = 2**53
"""Largest step index accepted: every integer up to it is exact as a float64, the type the rules compute in
(and a run of 2**53 steps would take 285 years at a million steps a second)."""

EARLIEST_STEP = -1
"""The step of records written before the first training step: a metric logged (or a NaN loss seen) before
training, a watch closed before any step. Step records themselves start at 0."""

MAX_COUNT = 2**62
"""Largest count accepted (elements, ``numel``, fan-in, world size): fits an int64 with room to add."""

MAX_ABS_VALUE = float(np.finfo(np.float32).max)
"""Largest magnitude of a statistic. The writer measures in float32, where anything larger is Inf; a larger
value (``1e308``) can only come from damage, and squaring it would overflow the rules' float64 arithmetic.
Such a value is read as missing (None/NaN), like the non-finite values the writer stores as ``null``."""

MAX_SHAPE_DIMS = 64
"""Most dimensions of a parameter's shape (torch allows 64)."""

ROW_RANGES: dict[str, tuple[float, float]] = {
    "count": (0.0, MAX_COUNT), "absmax": (0.0, math.inf), "zero_frac": (0.0, 1.0),
    "nonfinite": (0.0, MAX_COUNT), "units": (0.0, MAX_COUNT), "inactive": (0.0, MAX_COUNT),
    "dead": (0.0, MAX_COUNT), "saturated": (0.0, MAX_COUNT), "dmean": (0.0, 1.0 + 1e-3),
    "grad_norm": (0.0, math.inf), "calls": (0.0, MAX_COUNT), "norm": (0.0, math.inf),
    "update_ratio": (0.0, math.inf), "grad_nonfinite": (0.0, 1.0),
}
"""Valid range of each statistic of a step row (Inf allowed where the writer can measure one); a value
outside it is read as missing (NaN). Fields not listed only have to be numbers: ``mean``, and ``var``, which
float32 rounding can leave a hair below 0 (the rules treat a negative variance as missing themselves)."""


LOAD_MEMORY_FACTOR = 64
LOAD_MEMORY_BASE = 4 * 2**20
"""The promise on memory: loading a log and diagnosing it peaks at no more than
``LOAD_MEMORY_FACTOR × log size + LOAD_MEMORY_BASE`` bytes (Python and numpy allocations), whatever the log
holds; tests/store/test_reader.py holds it on crafted logs (measured worst: ~45×, 40,000 metric names in one
record). Parsing one JSON line alone costs up to ~30× the line in Python objects, hence the factor; the base
is what the first report of a process allocates whatever the log (~1.2 MB, mostly lazily imported rules)."""

MAX_LOOP_STEPS = 2**16
"""Most steps a ``loop`` record may list in ``eval_steps`` or ``stale_grad_steps``: the writer lists at most the
steps between two step records (``every``, 20 by default); a longer list is damage, and refused before any of
it is kept."""

MAX_PROBLEMS = 50
"""Problem lines kept per file; later ones are only counted ("... and N more"). A log of a million damaged
lines must not produce a million lines of report, nor hold them in memory (a problem line is ~100× the size
of a 2-byte damaged line)."""


class ProblemList(list[str]):
    """A list of problem lines that keeps the first ``MAX_PROBLEMS`` and counts the rest; ``close(source)``
    adds the count as a last line."""

    def __init__(self) -> None:
        super().__init__()
        self.more = 0

    def append(self, msg: str) -> None:
        if len(self) < MAX_PROBLEMS:
            super().append(msg)
        else:
            self.more += 1

    def close(self, source: object) -> list[str]:
        out = list(self)
        if self.more:
            out.append(f"{source}: {self.more} more problems like these (only the first {MAX_PROBLEMS} listed)")
        return out


class BadRecord(ValueError):
    """A record that does not match the schema; the message says which field and why (one line)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


# --- scalars ---------------------------------------------------------------------------------------------

def text(v: Any, what: str) -> str:
    """A string, with lone surrogates (``"\\ud800"`` in the JSON) replaced by U+FFFD: kept as data, never a
    ``UnicodeEncodeError`` when it is printed or written later."""
    if not isinstance(v, str):
        raise BadRecord(f"{what}: expected a string, got {kind_of(v)}")
    if v.isascii():
        return v
    # After json.loads a valid pair is already one character: any surrogate left is a lone one.
    return _SURROGATE.sub("\ufffd", v)


def opt_text(v: Any, what: str) -> str | None:
    return None if v is None else text(v, what)


def integer(v: Any, what: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    """An int in ``[lo, hi]`` (a bool is not an int here, nor is ``3.0``)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRecord(f"{what}: expected an integer, got {kind_of(v)}")
    if not lo <= v <= hi:
        raise BadRecord(f"{what}: {short_num(v)} is outside {lo}..{short_num(hi)}")
    return v


def opt_integer(v: Any, what: str, lo: int = 0, hi: int = MAX_COUNT) -> int | None:
    return None if v is None else integer(v, what, lo, hi)


def step(v: Any, what: str = "step") -> int:
    """A training step index: 0..``MAX_STEP``."""
    return integer(v, what, 0, MAX_STEP)


def event_step(v: Any, what: str = "step") -> int:
    """The step of a metrics, nonfinite, close or problem record: may be ``EARLIEST_STEP`` (before training)."""
    return integer(v, what, EARLIEST_STEP, MAX_STEP)


def number(v: Any, what: str) -> float | None:
    """A float, or None for null and for values no float32 measurement can hold (non-finite, ``1e308``)."""
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BadRecord(f"{what}: expected a number, got {kind_of(v)}")
    x = float(v) if not isinstance(v, int) or abs(v) <= MAX_COUNT else math.inf
    return x if math.isfinite(x) and abs(x) <= MAX_ABS_VALUE else None


def finite(v: Any, what: str, default: float | None = None) -> float:
    """A number that must be there and be finite (times, settings)."""
    if v is None and default is not None:
        return default
    x = number(v, what)
    if x is None:
        raise BadRecord(f"{what}: expected a finite number, got {kind_of(v)}")
    return x


def nonneg(v: Any, what: str) -> float | None:
    """A norm or standard deviation: a number ≥ 0 or None (a negative one is read as missing)."""
    x = number(v, what)
    return x if x is None or x >= 0.0 else None


def boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise BadRecord(f"{what}: expected true or false, got {kind_of(v)}")
    return v


def obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise BadRecord(f"{what}: expected an object, got {kind_of(v)}")
    return v


def seq(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise BadRecord(f"{what}: expected a list, got {kind_of(v)}")
    return v


def free(v: Any) -> Any:
    """Free-form metadata (``extra``, ``optimizer``): any JSON, with its strings (and keys) made well-formed
    and its numbers bounded like statistics. Its depth is bounded by ``MAX_DEPTH`` before parsing."""
    if isinstance(v, str):
        return text(v, "")
    if isinstance(v, dict):
        return {text(k, ""): free(x) for k, x in v.items()}
    if isinstance(v, list):
        return [free(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v if isinstance(v, int) and abs(v) <= MAX_COUNT else number(v, "")
    return v   # None, bool


# --- records -----------------------------------------------------------------------------------------------

def header(d: Mapping[str, Any]) -> Header:
    """The header, every field checked; raises ``BadRecord``."""
    layer_fields = _fields(d.get("layer_fields", list(LAYER_FIELDS)), "layer_fields")
    param_fields = _fields(d.get("param_fields", list(PARAM_FIELDS)), "param_fields")
    layers = tuple(_layer(x, i) for i, x in enumerate(seq(d.get("layers", []), "layers")))
    params = tuple(_param(x, i) for i, x in enumerate(seq(d.get("params", []), "params")))
    opt = d.get("optimizer")
    extra = d.get("extra")
    world = integer(d.get("world_size", 1), "world_size", 1, MAX_COUNT)
    return Header(
        schema=integer(d.get("schema"), "schema", 0, MAX_COUNT),
        gradscope=text(d.get("gradscope", "?"), "gradscope"), torch=opt_text(d.get("torch"), "torch"),
        created=text(d.get("created", ""), "created"), rank=integer(d.get("rank", 0), "rank"),
        world_size=world, every=integer(d.get("every", 1), "every", 1, MAX_STEP),
        warmup=integer(d.get("warmup", 0), "warmup", 0, MAX_STEP),
        dead_window=integer(d.get("dead_window", 1), "dead_window", 0, MAX_STEP),
        saturation_derivative=_in(finite(d.get("saturation_derivative", 0.1), "saturation_derivative"),
                                  0.0, MAX_ABS_VALUE, "saturation_derivative"),
        step_unit=text(d.get("step_unit", "forward"), "step_unit"), model=text(d.get("model", "?"), "model"),
        layers=layers, params=params,
        optimizer=None if opt is None else free(obj(opt, "optimizer")),
        layer_fields=layer_fields, param_fields=param_fields,
        extra={} if extra is None else free(obj(extra, "extra")),
    )


def _fields(v: Any, what: str) -> tuple[str, ...]:
    names = seq(v, what)
    if len(names) > MAX_FIELDS:
        raise BadRecord(f"{what}: {len(names)} columns, at most {MAX_FIELDS} are read")
    out = tuple(text(x, what) for x in names)
    if len(set(out)) != len(out):
        raise BadRecord(f"{what}: a column is named twice")
    return out


def _layer(v: Any, i: int) -> LayerInfo:
    d = obj(v, f"layers[{i}]")
    w = f"layers[{i}]"
    return LayerInfo(name=text(d.get("name"), f"{w}.name"), type=text(d.get("type", "?"), f"{w}.type"),
                     fan_in=opt_integer(d.get("fan_in"), f"{w}.fan_in"),
                     fan_out=opt_integer(d.get("fan_out"), f"{w}.fan_out"),
                     unit_dim=opt_integer(d.get("unit_dim"), f"{w}.unit_dim", -MAX_SHAPE_DIMS, MAX_SHAPE_DIMS),
                     act=opt_text(d.get("act"), f"{w}.act"),
                     params=tuple(text(p, f"{w}.params") for p in seq(d.get("params", []), f"{w}.params")),
                     weight=opt_text(d.get("weight"), f"{w}.weight"))


def _param(v: Any, i: int) -> ParamInfo:
    d = obj(v, f"params[{i}]")
    w = f"params[{i}]"
    shape = seq(d.get("shape", []), f"{w}.shape")
    if len(shape) > MAX_SHAPE_DIMS:
        raise BadRecord(f"{w}.shape: {len(shape)} dimensions")
    return ParamInfo(name=text(d.get("name"), f"{w}.name"), layer=opt_text(d.get("layer"), f"{w}.layer"),
                     shape=tuple(integer(s, f"{w}.shape") for s in shape),
                     numel=integer(d.get("numel", 0), f"{w}.numel"),
                     init_mean=number(d.get("init_mean"), f"{w}.init_mean"),
                     init_std=nonneg(d.get("init_std"), f"{w}.init_std"))


def input_stats(v: Any) -> InputStats:
    d = obj(v, "input")
    return InputStats(mean=number(d.get("mean"), "input.mean"), std=nonneg(d.get("std"), "input.std"),
                      min=number(d.get("min"), "input.min"), max=number(d.get("max"), "input.max"),
                      count=integer(d.get("count", 0), "input.count"),
                      feature_std_min=nonneg(d.get("feature_std_min"), "input.feature_std_min"),
                      feature_std_max=nonneg(d.get("feature_std_max"), "input.feature_std_max"),
                      feature_mean_absmax=nonneg(d.get("feature_mean_absmax"), "input.feature_mean_absmax"))


def step_norms(v: Any, what: str) -> tuple[tuple[int, float | None], ...]:
    """``[[step, total grad norm | null], ...]``."""
    out = []
    for i, pair in enumerate(seq(v, what)):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRecord(f"{what}[{i}]: expected [step, norm]")
        out.append((step(pair[0], f"{what}[{i}] step"), nonneg(pair[1], f"{what}[{i}] norm")))
    return tuple(out)


def learning_rates(v: Any) -> tuple[float, ...]:
    out = []
    for i, x in enumerate(seq(v, "lr")):
        out.append(finite(x, f"lr[{i}]"))
    return tuple(out)


def metrics(d: Mapping[str, Any]) -> MetricsRecord:
    values = {text(k, "values"): number(v, f"values.{k}") for k, v in obj(d.get("values", {}), "values").items()}
    return MetricsRecord(step=event_step(d.get("step")), values=values)


def nonfinite(d: Mapping[str, Any]) -> NonFiniteRecord:
    return NonFiniteRecord(step=event_step(d.get("step")), where=text(d.get("where", "?"), "where"),
                           layer=opt_text(d.get("layer"), "layer"), param=opt_text(d.get("param"), "param"))


def close(d: Mapping[str, Any]) -> CloseRecord:
    extra = d.get("extra")
    return CloseRecord(step=event_step(d.get("step", 0)), time=finite(d.get("time", 0.0), "time"),
                       extra={} if extra is None else free(obj(extra, "extra")))


def loop(d: Mapping[str, Any]) -> LoopRecord:
    """A ``loop`` record: ``from_step`` ≤ ``step`` + 1 (a record of no step, written at close for the passes
    after the last step, has ``from_step`` = ``step`` + 1 and empty step lists); ``eval_forwards`` ≤
    ``forwards``; each step list strictly increasing inside ``from_step..step``, at most ``MAX_LOOP_STEPS``
    long and no longer than its count (``eval_forwards``, ``grad_checks``); ``train_nograd_repeats`` ≤
    ``train_nograd_forwards``; ``output_cols`` (optional) ≥ 2, and with it ``output_min``, ``output_sum_lo`` ≤
    ``output_sum_hi`` (numbers or null; without ``output_cols`` they are ignored). Unknown keys are ignored."""
    last = step(d.get("step"))
    first = step(d.get("from_step"), "from_step")
    if first > last + 1:
        raise BadRecord(f"from_step: {first} is after step {last} + 1")
    forwards = integer(d.get("forwards", 0), "forwards")
    evals = integer(d.get("eval_forwards", 0), "eval_forwards", 0, forwards)
    checks = integer(d.get("grad_checks", 0), "grad_checks")
    nograd = integer(d.get("train_nograd_forwards", 0), "train_nograd_forwards")
    return LoopRecord(step=last, from_step=first, forwards=forwards, eval_forwards=evals,
                      train_nograd_forwards=nograd,
                      train_nograd_repeats=integer(d.get("train_nograd_repeats", 0), "train_nograd_repeats", 0,
                                                   nograd),
                      eval_steps=_steps_in(d.get("eval_steps", []), "eval_steps", first, last, evals),
                      grad_checks=checks,
                      stale_grad_steps=_steps_in(d.get("stale_grad_steps", []), "stale_grad_steps", first, last,
                                                 checks),
                      **_loop_output(d))


def _loop_output(d: Mapping[str, Any]) -> dict[str, Any]:
    """The optional model-output keys of a ``loop`` record (``probabilities_as_logits``): {} when absent."""
    cols = opt_integer(d.get("output_cols"), "output_cols", 2)
    if cols is None:
        return {}
    lo, hi = number(d.get("output_sum_lo"), "output_sum_lo"), number(d.get("output_sum_hi"), "output_sum_hi")
    if lo is not None and hi is not None and lo > hi:
        raise BadRecord(f"output_sum_lo: {short_num(lo)} is above output_sum_hi {short_num(hi)}")
    return {"output_min": number(d.get("output_min"), "output_min"), "output_sum_lo": lo, "output_sum_hi": hi,
            "output_cols": cols}


def _steps_in(v: Any, what: str, lo: int, hi: int, most: int) -> tuple[int, ...]:
    xs = seq(v, what)
    if len(xs) > min(most, MAX_LOOP_STEPS):
        raise BadRecord(f"{what}: {len(xs)} steps, at most {min(most, MAX_LOOP_STEPS)}")
    prev = lo - 1
    for i, x in enumerate(xs):
        integer(x, f"{what}[{i}]", prev + 1, hi)
        prev = x
    return tuple(xs)


def activations(d: Mapping[str, Any]) -> dict[str, str]:
    return {text(k, "acts"): text(v, f"acts.{k}") for k, v in obj(d.get("acts", {}), "acts").items()}


def problem(d: Mapping[str, Any]) -> str:
    """A ``problem`` record (the watch caught a failure of its own) as one readable line."""
    at = d.get("step")
    where = opt_text(d.get("where"), "where")
    msg = text(d.get("message", d.get("error", "")), "message")
    place = "".join([f" at step {event_step(at)}" if at is not None else "", f" in {where}" if where else ""])
    return f"the watch recorded a problem of its own{place}: {' '.join(msg.split())[:500] or '(no message)'}"


def _in(x: float, lo: float, hi: float, what: str) -> float:
    if not lo <= x <= hi:
        raise BadRecord(f"{what}: {x:g} is outside {lo:g}..{hi:g}")
    return x


# --- rows --------------------------------------------------------------------------------------------------

def row_bytes(packed: Any, n_rows: int, width: int, what: str) -> bytes:
    """The rows of one step record as ``n_rows × width`` little-endian float32 bytes, row-major, checked:
    a packed base64 string must have exactly the length the header's sizes give (checked before it is
    decoded) and be strict base64; nested lists must have ``n_rows`` rows of at most ``width`` numbers
    (None/missing → NaN). Raises ``BadRecord``. Values are not range-checked here: ``clamp_column`` does
    that for every step of a log at once, before the rows are used (per record, 17 columns of a few hundred
    values each, it cost more than decoding them)."""
    if isinstance(packed, str):
        n_bytes = n_rows * width * 4
        if len(packed) != 4 * ((n_bytes + 2) // 3):
            raise BadRecord(f"{what}: packed rows of {len(packed)} characters, the header's "
                            f"{n_rows}×{width} numbers need {4 * ((n_bytes + 2) // 3)}")
        try:
            raw = binascii.a2b_base64(packed, strict_mode=True)
        except ValueError as e:   # binascii.Error, and non-ASCII text
            raise BadRecord(f"{what}: packed rows are not base64 ({e})") from None
        if len(raw) != n_bytes:
            raise BadRecord(f"{what}: packed rows hold {len(raw)} bytes, expected {n_bytes}")
        return raw
    lst = seq(packed, what)
    if len(lst) != n_rows:
        raise BadRecord(f"{what}: {len(lst)} rows, the header lists {n_rows}")
    a64 = np.full((n_rows, width), np.nan)
    for i, r in enumerate(lst):
        if r is None:
            continue
        if not isinstance(r, list) or len(r) > width:
            raise BadRecord(f"{what}[{i}]: expected a list of at most {width} numbers")
        for j, v in enumerate(r):
            x = number(v, f"{what}[{i}][{j}]")
            if x is not None:
                a64[i, j] = x
    return a64.astype("<f4").tobytes()


def clamp_column(col: np.ndarray, field: str) -> None:
    """Values of statistic ``field`` outside ``ROW_RANGES[field]`` become NaN, in place, for any number of
    steps at once (the reader passes every step of a log together, one contiguous column)."""
    lo_hi = _ROW_RANGES_F32.get(field)
    if lo_hi is None or not col.size:
        return
    with np.errstate(invalid="ignore"):
        bad = col < lo_hi[0]
        if lo_hi[1] != math.inf:   # (x > inf is never true)
            bad |= col > lo_hi[1]
    col[bad] = np.nan


_ROW_RANGES_F32 = {f: (float(np.float32(lo)), float(np.float32(hi))) for f, (lo, hi) in ROW_RANGES.items()}
"""``ROW_RANGES`` rounded to float32, the precision of the values: a column judged in float64 (the reader's)
or in float32 gives the same answer (``dmean``'s 1.001 is 1.00100005 in float32)."""


# --- lines -------------------------------------------------------------------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def too_deep(line: str) -> bool:
    """Whether the JSON in ``line`` nests deeper than ``MAX_DEPTH``, found by scanning brackets (outside
    strings) without parsing: the parser recurses once per level, so this must be known before it runs."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:
        return False
    if '"' in line:
        line = _STRING.sub('""', line)
    b = np.frombuffer(line.encode("utf-8", "replace"), dtype=np.uint8)
    return bool(np.cumsum(_OPEN[b], dtype=np.int64).max(initial=0) > MAX_DEPTH)


def kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return short_num(v)
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(v), type(v).__name__)


def short_num(v: float) -> str:
    """A number for a message: short even when it has thousands of digits."""
    if isinstance(v, int) and abs(v) >= 10**15:
        digits = len(str(abs(v)))
        return f"{float(v):.3g}" if digits < 300 else f"a {digits}-digit integer"
    return repr(v)[:30]
