"""The records of a gradscope run log, as plain data.

This module is the contract between the write side (``watch``, which needs torch) and the read side
(``load``, the rules, the reporters, which do not). It imports neither torch nor numpy.

A log is JSON Lines, one record per line, each a JSON object with a ``kind``:

``header``       first line; schema version, the layers and parameters in a fixed order, run metadata.
``activations``  which activation function follows each layer, learned on the first training forward pass.
``step``         one recorded training step: per-layer and per-parameter statistics as positional rows in
                 the order of ``LAYER_FIELDS`` / ``PARAM_FIELDS`` (listed in the header, so a reader never
                 guesses), plus the total gradient norm of every step since the previous record. The rows
                 are packed as base64 of little-endian float32, row-major, NaN for missing: a 200-layer
                 record is ~4,000 numbers, and parsing them as JSON text is what made a 10,000-step log take
                 40 s to read; packed, it reads in about a second. Readers also accept plain nested arrays.
``metrics``      user scalars from ``scope.log(...)``.
``nonfinite``    the first step and place where a NaN or Inf appeared.
``grad_norms``   total gradient norms of the steps after the last ``step`` record, written by ``close()``.
``close``        written by ``close()``; its absence means the run crashed or is still running.
``loop``         how the training loop behaved over steps ``from_step``..``step`` (after each ``step`` record
                 and at close): forwards counted, eval-mode training passes, ``.grad`` found not zeroed.

Non-finite floats outside the packed rows are written as ``null`` so every line is strict JSON (``jq`` and
browsers read it); the ``nonfinite`` counts and records say what they were. See docs/log-format.md.
"""

from __future__ import annotations

import array
import base64
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gradscope._numbers import finite

SCHEMA_VERSION = 1
"""Bumped whenever a reader of the previous version would misread a new log. Readers refuse newer logs."""

LOG_FILE_PREFIX = "gradscope"
LOG_FILE_SUFFIX = ".jsonl"

LAYER_FIELDS: tuple[str, ...] = (
    "count",       # elements reduced this step (all calls, all micro-batches)
    "mean",        # activation (layer output, i.e. the pre-activation of the next nonlinearity) mean
    "var",         # its variance, population, fp32
    "absmax",      # max |x|
    "zero_frac",   # fraction of exact zeros
    "nonfinite",   # count of NaN/Inf elements
    "units",       # features (Linear, last dim) or channels (Conv, dim 1) of the output
    "inactive",    # units never positive for any sample of this step
    "dead",        # units never positive in any of the last ``dead_window`` recorded steps
    "saturated",   # units whose mean normalized derivative of the following sigmoid/tanh is below threshold
    "dmean",       # mean normalized derivative of the following sigmoid/tanh (1 = linear regime, 0 = pinned)
    "grad_norm",   # L2 norm of the loss gradient w.r.t. this layer's output
    "calls",       # forward calls this step (shared modules, micro-batches)
)
"""Per-layer statistics of a step record, in row order."""

PARAM_FIELDS: tuple[str, ...] = (
    "grad_norm",     # L2 norm of the accumulated gradient, before any clipping
    "norm",          # L2 norm of the weights at the start of the step
    "update_ratio",  # ||Δw|| / ||w|| over this step (estimated from a fixed sample for large tensors)
    "grad_nonfinite",  # 1 when the gradient held NaN/Inf, else 0
)
"""Per-parameter statistics of a step record, in row order."""

SATURATING_ACTIVATIONS = frozenset({"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid"})
RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
                         "prelu", "rrelu", "softplus", "hardswish"})
DYING_ACTIVATIONS = frozenset({"relu", "relu6"})
"""Activations whose units can die: zero output and zero gradient for every negative input."""




@dataclass(frozen=True)
class ParamInfo:
    name: str            # qualified name, e.g. "encoder.layers.0.linear1.weight"
    layer: str | None    # the watched layer that owns it, or None
    shape: tuple[int, ...]
    numel: int
    init_mean: float | None
    init_std: float | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParamInfo:
        return cls(name=str(d["name"]), layer=d.get("layer"), shape=tuple(int(s) for s in d.get("shape", ())),
                   numel=int(d.get("numel", 0)), init_mean=d.get("init_mean"), init_std=d.get("init_std"))


@dataclass(frozen=True)
class LayerInfo:
    name: str                 # qualified module name ("" for the root)
    type: str                 # class name, e.g. "Linear", "Conv2d", "LSTM"
    fan_in: int | None        # inputs per output unit (in_features, in_channels * kernel area)
    fan_out: int | None       # outputs per input unit (out_features, out_channels * kernel area)
    unit_dim: int | None      # dimension of the output that indexes units (-1 features, 1 channels)
    act: str | None = None    # activation that follows, when inferred ("relu", "tanh", ...)
    params: tuple[str, ...] = ()   # names of its parameters, into ``Header.params``
    weight: str | None = None      # name of its main weight parameter, if any

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = list(self.params)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        return cls(name=str(d["name"]), type=str(d.get("type", "?")), fan_in=d.get("fan_in"),
                   fan_out=d.get("fan_out"), unit_dim=d.get("unit_dim"), act=d.get("act"),
                   params=tuple(d.get("params", ())), weight=d.get("weight"))


@dataclass(frozen=True)
class Header:
    schema: int
    gradscope: str
    torch: str | None
    created: str               # ISO 8601, UTC
    rank: int
    world_size: int
    every: int                 # record every N steps
    warmup: int                # the first N steps are always recorded
    dead_window: int           # recorded steps a unit must stay inactive to count as dead
    saturation_derivative: float  # normalized derivative below which a unit counts as saturated
    step_unit: str             # "forward" (root training forward passes) or "optimizer" (optimizer steps)
    model: str                 # class name of the root module
    layers: tuple[LayerInfo, ...]
    params: tuple[ParamInfo, ...]
    optimizer: dict[str, Any] | None = None
    layer_fields: tuple[str, ...] = LAYER_FIELDS
    param_fields: tuple[str, ...] = PARAM_FIELDS
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "header", "schema": self.schema, "gradscope": self.gradscope, "torch": self.torch,
            "created": self.created, "rank": self.rank, "world_size": self.world_size, "every": self.every,
            "warmup": self.warmup, "dead_window": self.dead_window,
            "saturation_derivative": self.saturation_derivative, "step_unit": self.step_unit,
            "model": self.model, "layers": [la.to_dict() for la in self.layers],
            "params": [p.to_dict() for p in self.params], "optimizer": self.optimizer,
            "layer_fields": list(self.layer_fields), "param_fields": list(self.param_fields),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Header:
        return cls(
            schema=int(d["schema"]), gradscope=str(d.get("gradscope", "?")), torch=d.get("torch"),
            created=str(d.get("created", "")), rank=int(d.get("rank", 0)), world_size=int(d.get("world_size", 1)),
            every=int(d.get("every", 1)), warmup=int(d.get("warmup", 0)), dead_window=int(d.get("dead_window", 1)),
            saturation_derivative=float(d.get("saturation_derivative", 0.1)),
            step_unit=str(d.get("step_unit", "forward")), model=str(d.get("model", "?")),
            layers=tuple(LayerInfo.from_dict(x) for x in d.get("layers", ())),
            params=tuple(ParamInfo.from_dict(x) for x in d.get("params", ())),
            optimizer=d.get("optimizer"), layer_fields=tuple(d.get("layer_fields", LAYER_FIELDS)),
            param_fields=tuple(d.get("param_fields", PARAM_FIELDS)), extra=dict(d.get("extra") or {}),
        )


@dataclass(frozen=True)
class InputStats:
    """Statistics of the root module's first tensor input on a recorded step (for ``unnormalized_input``)."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    count: int
    feature_std_min: float | None = None   # smallest / largest per-feature std (last dim for 2-D inputs,
    feature_std_max: float | None = None   # channels for images): a wide spread means unscaled features
    feature_mean_absmax: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputStats:
        return cls(mean=d.get("mean"), std=d.get("std"), min=d.get("min"), max=d.get("max"),
                   count=int(d.get("count", 0)), feature_std_min=d.get("feature_std_min"),
                   feature_std_max=d.get("feature_std_max"), feature_mean_absmax=d.get("feature_mean_absmax"))


@dataclass(frozen=True)
class StepRecord:
    step: int
    time: float                                   # seconds since attach
    layers: tuple[tuple[float | None, ...] | None, ...]   # one row per header layer (None: not called)
    params: tuple[tuple[float | None, ...] | None, ...]   # one row per header param (None: no gradient)
    grad_norm: float | None                        # total gradient norm of this step, before clipping
    grad_norm_steps: tuple[tuple[int, float | None], ...] = ()  # (step, total grad norm) for every step
    lr: tuple[float, ...] = ()                     # learning rate per optimizer param group
    input: InputStats | None = None
    skipped: bool = False                          # the optimizer step was skipped (AMP GradScaler inf/nan)
    clip_norm: float | None = None                 # total grad norm at optimizer-step time (after the user's
    #                                                clipping); below grad_norm means clipping is active

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "step", "step": self.step, "time": round(self.time, 6),
            "layers": encode_rows(self.layers, len(LAYER_FIELDS)),
            "params": encode_rows(self.params, len(PARAM_FIELDS)),
            "grad_norm": _num(self.grad_norm),
            "grad_norm_steps": [[s, _num(v)] for s, v in self.grad_norm_steps],
        }
        if self.lr:
            d["lr"] = list(self.lr)
        if self.input is not None:
            d["input"] = self.input.to_dict()
        if self.skipped:
            d["skipped"] = True
        if self.clip_norm is not None:
            d["clip_norm"] = _num(self.clip_norm)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, layer_width: int = len(LAYER_FIELDS),
                  param_width: int = len(PARAM_FIELDS)) -> StepRecord:
        inp = d.get("input")
        return cls(
            step=int(d["step"]), time=float(d.get("time", 0.0)),
            layers=decode_rows(d.get("layers", ()), layer_width),
            params=decode_rows(d.get("params", ()), param_width),
            grad_norm=d.get("grad_norm"),
            grad_norm_steps=tuple((int(s), v) for s, v in d.get("grad_norm_steps", ())),
            lr=tuple(d.get("lr", ())), input=None if inp is None else InputStats.from_dict(inp),
            skipped=bool(d.get("skipped", False)), clip_norm=d.get("clip_norm"),
        )


@dataclass(frozen=True)
class MetricsRecord:
    step: int
    values: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "metrics", "step": self.step, "values": {k: _num(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricsRecord:
        return cls(step=int(d["step"]), values=dict(d.get("values", {})))


@dataclass(frozen=True)
class NonFiniteRecord:
    """The first place a NaN/Inf showed up: ``where`` is "activation", "gradient", "output" or "loss"."""

    step: int
    where: str
    layer: str | None = None
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "nonfinite", "step": self.step, "where": self.where, "layer": self.layer,
                "param": self.param}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NonFiniteRecord:
        return cls(step=int(d["step"]), where=str(d.get("where", "?")), layer=d.get("layer"),
                   param=d.get("param"))


@dataclass(frozen=True)
class CloseRecord:
    step: int
    time: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "close", "step": self.step, "time": round(self.time, 6), "extra": self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CloseRecord:
        return cls(step=int(d.get("step", 0)), time=float(d.get("time", 0.0)), extra=dict(d.get("extra") or {}))


@dataclass(frozen=True)
class LoopRecord:
    """How the training loop behaved over steps ``from_step``..``step`` (``measure.clock.LoopFacts``):
    ``forwards`` counted as (part of) a step, ``eval_forwards`` of them in eval mode followed by a backward,
    the steps with such a pass (``eval_steps``), ``grad_checks`` backwards checked right after an optimizer
    step, and the steps whose ``.grad`` was then still the unmodified one that step used
    (``stale_grad_steps``: ``zero_grad()`` missing); ``train_nograd_forwards`` root forwards in train mode with
    grad disabled (not steps: validation left in train mode, or Monte Carlo dropout), ``train_nograd_repeats`` of
    them on the same input tensor as the one before. In a record after a ``step`` record whose forward had a
    model output of 2 or more classes: ``output_min`` (its least entry), ``output_sum_lo``/``output_sum_hi`` (its
    least and greatest row sum) at step ``step``, and ``output_cols`` (its classes); None otherwise (an older
    writer, a record of no step, a one-column output)."""

    step: int
    from_step: int
    forwards: int = 0
    eval_forwards: int = 0
    eval_steps: tuple[int, ...] = ()
    grad_checks: int = 0
    stale_grad_steps: tuple[int, ...] = ()
    train_nograd_forwards: int = 0
    train_nograd_repeats: int = 0
    output_min: float | None = None
    output_sum_lo: float | None = None
    output_sum_hi: float | None = None
    output_cols: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "loop", "step": self.step, "from_step": self.from_step, "forwards": self.forwards,
            "eval_forwards": self.eval_forwards, "eval_steps": list(self.eval_steps),
            "grad_checks": self.grad_checks, "stale_grad_steps": list(self.stale_grad_steps),
            "train_nograd_forwards": self.train_nograd_forwards, "train_nograd_repeats": self.train_nograd_repeats}
        if self.output_cols is not None:
            d.update(output_min=_num(self.output_min), output_sum_lo=_num(self.output_sum_lo),
                     output_sum_hi=_num(self.output_sum_hi), output_cols=self.output_cols)
        return d


def _num(v: float | int | None) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, int):
        return v
    if not math.isfinite(v):
        return None
    # 7 significant digits: float32 precision, and a third of repr()'s size on disk.
    return float(f"{v:.7g}")


Row = tuple[float | None, ...]


def encode_rows(rows: Sequence[Sequence[float | None] | None], width: int) -> str:
    """Pack rows of ``width`` numbers as base64 of little-endian float32; None (and a missing row) → NaN."""
    flat = array.array("f")
    nan = float("nan")
    for r in rows:
        if r is None:
            flat.extend([nan] * width)
        else:
            vals = [nan if v is None else float(v) for v in r[:width]]
            flat.extend(vals + [nan] * (width - len(vals)))
    if sys.byteorder == "big":
        flat.byteswap()
    return base64.b64encode(flat.tobytes()).decode("ascii")


def decode_rows(packed: str | Sequence[Any], width: int) -> tuple[Row | None, ...]:
    """Inverse of ``encode_rows`` (also accepts plain nested lists): an all-NaN row is None, NaN is None."""
    if not isinstance(packed, str):
        return tuple(None if r is None else tuple(r) for r in packed)
    flat = array.array("f")
    raw = base64.b64decode(packed.encode("ascii"), validate=True)
    if width <= 0 or len(raw) % (4 * width):
        raise ValueError(f"packed rows of {len(raw)} bytes do not divide into rows of {width} float32")
    flat.frombytes(raw)
    if sys.byteorder == "big":
        flat.byteswap()
    out: list[Row | None] = []
    for i in range(0, len(flat), width):
        row = tuple(None if math.isnan(v) else v for v in flat[i:i + width])
        out.append(None if all(v is None for v in row) else row)
    return tuple(out)


def activations_record(acts: Mapping[str, str]) -> dict[str, Any]:
    return {"kind": "activations", "acts": dict(acts)}


def layer_row(values: Sequence[float | None]) -> tuple[float | None, ...]:
    if len(values) != len(LAYER_FIELDS):
        raise ValueError(f"layer row has {len(values)} values, expected {len(LAYER_FIELDS)}")
    return tuple(values)
