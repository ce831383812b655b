"""The TensorBoard mirror: gradscope's statistics as scalars next to the user's own (write side, torch).

The JSONL log stays the source of truth: TensorBoard's reader stops silently at the first corrupt record.
Tags are grouped by statistic (``grad_norm/<layer>``), written with ``add_scalar`` into one event file:
``add_scalars`` would open a writer and a file per key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradscope.records import LAYER_FIELDS, PARAM_FIELDS, StepRecord

TAG_PREFIXES = ("gradscope/", "grad_norm/", "act_std/", "act_mean/", "dead_pct/", "saturation_pct/",
                "update_ratio/", "param_grad_norm/", "grad_norm_total")
"""Every tag gradscope writes starts with one of these; the report's TensorBoard reader skips them."""

_L = {f: i for i, f in enumerate(LAYER_FIELDS)}
_P = {f: i for i, f in enumerate(PARAM_FIELDS)}


class TensorBoardMirror:
    def __init__(self, logdir: str | os.PathLike[str], layers: Sequence[Any], param_names: Sequence[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._w: Any = SummaryWriter(log_dir=str(Path(logdir)))
        self._layers = [getattr(la, "name", str(la)) or "root" for la in layers]
        self._params = list(param_names)

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None and math.isfinite(value):
            self._w.add_scalar(tag, value, step)

    def step(self, rec: StepRecord) -> None:
        s = rec.step
        for name, row in zip(self._layers, rec.layers, strict=False):
            if row is None:
                continue
            self._scalar(f"grad_norm/{name}", row[_L["grad_norm"]], s)
            var = row[_L["var"]]
            self._scalar(f"act_std/{name}", None if var is None else math.sqrt(var), s)
            units, dead, sat = row[_L["units"]], row[_L["dead"]], row[_L["saturated"]]
            if units and dead is not None:
                self._scalar(f"dead_pct/{name}", 100.0 * dead / units, s)
            if units and sat is not None:
                self._scalar(f"saturation_pct/{name}", 100.0 * sat / units, s)
        for name, prow in zip(self._params, rec.params, strict=False):
            if prow is not None:
                self._scalar(f"update_ratio/{name}", prow[_P["update_ratio"]], s)
        for step, v in rec.grad_norm_steps:
            self._scalar("grad_norm_total", v, step)

    def metrics(self, step: int, values: Mapping[str, float | None]) -> None:
        for k, v in values.items():
            self._scalar(f"gradscope/{k}", v, step)

    def close(self) -> None:
        self._w.close()
