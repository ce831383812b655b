"""Synthetic gradscope logs and TensorBoard scalars for the read-side tests (no torch).

Logs are written with the real ``LogWriter`` and ``records`` dataclasses, so a test exercises the same bytes
``gradscope.watch`` produces; every number is deterministic (golden files depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradscope.store.jsonl import LogWriter, log_path
from gradscope.store.schema import (
    LAYER_FIELDS,
    PARAM_FIELDS,
    SCHEMA_VERSION,
    CloseRecord,
    Header,
    InputStats,
    LayerInfo,
    MetricsRecord,
    NonFiniteRecord,
    ParamInfo,
    StepRecord,
    activations_record,
)

# name, type, fan_in, fan_out, act
MLP_LAYERS: tuple[tuple[str, str, int, int, str | None], ...] = (
    ("fc1", "Linear", 20, 64, "relu"),
    ("fc2", "Linear", 64, 64, "relu"),
    ("fc3", "Linear", 64, 3, None),
)

LayerFn = Callable[[int, int, LayerInfo], Mapping[str, float | None]]
"""(step, layer index, layer) → per-layer statistics by field name (missing fields are null)."""


def make_header(layers: Sequence[tuple[str, str, int, int, str | None]] = MLP_LAYERS, *, model: str = "MLP",
                every: int = 1, warmup: int = 0, dead_window: int = 5, schema: int = SCHEMA_VERSION,
                step_unit: str = "optimizer") -> Header:
    infos = []
    params = []
    for name, typ, fan_in, fan_out, act in layers:
        w, b = f"{name}.weight", f"{name}.bias"
        infos.append(LayerInfo(name=name, type=typ, fan_in=fan_in, fan_out=fan_out, unit_dim=-1, act=act,
                               params=(w, b), weight=w))
        params.append(ParamInfo(name=w, layer=name, shape=(fan_out, fan_in), numel=fan_in * fan_out,
                                init_mean=0.0, init_std=math.sqrt(2.0 / fan_in)))
        params.append(ParamInfo(name=b, layer=name, shape=(fan_out,), numel=fan_out, init_mean=0.0,
                                init_std=0.0))
    return Header(schema=schema, gradscope="0.1.0", torch=None, created="2025-01-01T00:00:00+00:00", rank=0,
                  world_size=1, every=every, warmup=warmup, dead_window=dead_window,
                  saturation_derivative=0.1, step_unit=step_unit, model=model, layers=tuple(infos),
                  params=tuple(params), optimizer={"type": "SGD", "lr": 0.1})


def healthy_layer(step: int, i: int, layer: LayerInfo) -> dict[str, float | None]:
    """Smooth, plausible statistics: gradient norms shrinking slowly with training, no dead units."""
    units = float(layer.fan_out or 1)
    return {
        "count": 32.0 * units, "mean": 0.01 * (i + 1), "var": 1.0 / (i + 1), "absmax": 3.0, "zero_frac": 0.0,
        "nonfinite": 0.0, "units": units, "inactive": 0.0, "dead": 0.0 if layer.act == "relu" else None,
        "saturated": None, "dmean": None, "grad_norm": 0.5 * (i + 1) / (1.0 + 0.1 * step), "calls": 1.0,
    }


def step_record(step: int, header: Header, layer_fn: LayerFn = healthy_layer, *,
                grad_norm: float | None = None, lr: float = 0.1) -> StepRecord:
    rows = []
    for i, la in enumerate(header.layers):
        stats = layer_fn(step, i, la)
        rows.append(tuple(stats.get(f) for f in LAYER_FIELDS))
    base = 0.1 / (1.0 + 0.1 * step)
    pvals = {"grad_norm": base, "norm": 1.0 + 0.001 * step, "update_ratio": 1e-3, "grad_nonfinite": 0}
    prow = [tuple(pvals[f] for f in PARAM_FIELDS) for _ in header.params]
    total = grad_norm if grad_norm is not None else 1.0 / (1.0 + 0.1 * step)
    inp = InputStats(mean=0.0, std=1.0, min=-3.0, max=3.0, count=640) if step == 0 else None
    return StepRecord(step=step, time=0.01 * step, layers=tuple(rows), params=tuple(prow), grad_norm=total,
                      grad_norm_steps=((step, total),), lr=(lr,), input=inp)


Metrics = Mapping[int, Mapping[str, float | None]]


def write_log(logdir: str | Path, *, steps: int = 20, header: Header | None = None,
              layer_fn: LayerFn = healthy_layer, metrics: Metrics | None = None,
              nonfinite: Sequence[NonFiniteRecord] = (), close: bool = True,
              extra_records: Sequence[dict[str, Any]] = ()) -> Path:
    """A complete rank-0 log in ``logdir``; returns its path."""
    header = header or make_header()
    path = log_path(logdir)
    w = LogWriter(path)
    try:
        w.write(header.to_dict())
        w.write(activations_record({la.name: la.act for la in header.layers if la.act}))
        metrics = metrics or {}
        for s in range(0, steps, header.every):
            w.write(step_record(s, header, layer_fn).to_dict())
            if s in metrics:
                w.write(MetricsRecord(step=s, values=dict(metrics[s])).to_dict())
        for nf in nonfinite:
            w.write(nf.to_dict())
        for rec in extra_records:
            w.write(rec)
        if close:
            w.write(CloseRecord(step=steps - 1, time=0.01 * steps).to_dict())
    finally:
        w.close()
    return path


def overfit_metrics(epochs: int = 12, steps_per_epoch: int = 10) -> dict[int, dict[str, float | None]]:
    """Training loss falling all along, validation loss lowest at epoch 4 and rising after."""
    out = {}
    for e in range(epochs):
        out[(e + 1) * steps_per_epoch - 1] = {"train_loss": 1.0 / (1 + e),
                                              "val_loss": 0.5 + 0.02 * (e - 4) ** 2}
    return out


# --- damage ---------------------------------------------------------------------------------------------

def truncate_last_line(path: Path, keep: int = 15) -> None:
    """Cut the last line after ``keep`` characters and drop its newline: a writer killed mid-write."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[-1] = lines[-1][:keep]
    path.write_text("".join(lines), encoding="utf-8")


def corrupt_line(path: Path, lineno: int) -> None:
    """Replace line ``lineno`` (1-based) with bytes that are not JSON."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[lineno - 1] = '{"kind": "step", "step": 3, "layers": [[1, 2, \x00garbage\n'
    path.write_text("".join(lines), encoding="utf-8")


# --- TensorBoard (tensorboard's own writer, no torch) -------------------------------------------------------

def write_tb_scalars(logdir: str | Path, series: Mapping[str, Sequence[tuple[int, float]]], *,
                     new_style: bool = False, filename_suffix: str = "") -> Path:
    """An event file with ``tag → [(step, value)]`` scalars, as ``SummaryWriter.add_scalar`` writes them
    (``simple_value``), or tensor-based with the ``scalars`` plugin metadata when ``new_style``."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    Path(logdir).mkdir(parents=True, exist_ok=True)
    w = EventFileWriter(str(logdir), filename_suffix=filename_suffix)
    try:
        for tag, points in series.items():
            for step, value in points:
                if new_style:
                    v = Summary.Value(tag=tag, tensor=TensorProto(float_val=[value], dtype=1),
                                      metadata=SummaryMetadata(
                                          plugin_data=SummaryMetadata.PluginData(plugin_name="scalars")))
                else:
                    v = Summary.Value(tag=tag, simple_value=value)
                w.add_event(Event(step=step, wall_time=1.0e9 + step, summary=Summary(value=[v])))
    finally:
        w.close()
    return Path(w._file_name)
