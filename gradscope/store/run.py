"""A run as the rules see it: columns of plain numbers (numpy), no torch.

``run_from_log`` turns one parsed log (``store.jsonl.RawLog``) into a ``Run``; ``store.load`` finds the logs
of a folder and merges ranks and TensorBoard scalars into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gradscope.store.jsonl import RawLog
from gradscope.store.schema import (
    LAYER_FIELDS,
    PARAM_FIELDS,
    Header,
    InputStats,
    LayerInfo,
    LoopRecord,
    NonFiniteRecord,
    ParamInfo,
)

CLIP_RTOL = 1e-3
"""Relative drop of the total gradient norm between the end of backward and the optimizer step that counts
as clipping: two fp32 norms of the same gradients differ by ~1e-6, a clip that binds changes it by more."""

CANONICAL_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "train_error", "val_error")
"""Metric names the fit rules read (``scope.log(...)`` keys or mapped TensorBoard tags)."""


@dataclass(frozen=True)
class Series:
    """One scalar over time: ``steps[i]`` → ``values[i]`` (NaN where the value was non-finite)."""

    steps: np.ndarray   # (n,) int64
    values: np.ndarray  # (n,) float64
    source: str = "gradscope"   # "gradscope" (scope.log) or "tensorboard:<tag>"

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Loop:
    """The training loop's own habits, from the log's ``loop`` records (``records`` is 0 when the log has
    none: a writer older than them). Each record covers steps ``span[i, 0]..span[i, 1]``.

    ``forwards``, ``eval_forwards``, ``grad_checks``: per record, the forward passes counted as (part of) a
    step, those of them that ran in eval mode and were followed by a backward, and the backwards checked right
    after an optimizer step (only with ``watch(..., optimizer=)``). ``eval_steps``: the steps with such an
    eval-mode pass; ``stale_grad_steps``: the steps whose backward began with ``.grad`` still the unmodified
    tensor the previous optimizer step used (no ``zero_grad()``). ``train_nograd_forwards`` (per record): root
    forwards in train mode with grad disabled, not steps (validation left in train mode, Monte Carlo dropout);
    ``train_nograd_repeats``: those on the very input tensor of the one before. ``output_min``,
    ``output_sum_lo``, ``output_sum_hi`` (per record, NaN: not measured): the model output's least entry and
    least/greatest row sum at the record's step; ``output_cols`` its classes (0: not measured)."""

    span: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))         # (R, 2)
    forwards: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))          # (R,)
    eval_forwards: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))     # (R,)
    grad_checks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))       # (R,)
    eval_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))        # sorted
    stale_grad_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted
    train_nograd_forwards: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (R,)
    train_nograd_repeats: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))   # (R,)
    output_min: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))           # (R,)
    output_sum_lo: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))        # (R,)
    output_sum_hi: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))        # (R,)
    output_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))            # (R,)

    @property
    def records(self) -> int:
        return int(self.span.shape[0])

    @property
    def n_steps(self) -> int:
        """Steps the records cover."""
        return int((self.span[:, 1] - self.span[:, 0] + 1).sum()) if self.records else 0


def loop_from_records(records: Sequence[LoopRecord]) -> Loop:
    """``Loop`` from the checked ``loop`` records of one log (in order, not overlapping)."""
    def ints(xs: Sequence[int]) -> np.ndarray:
        return np.array(xs, dtype=np.int64)

    def floats(xs: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in xs], dtype=np.float64)

    return Loop(span=np.array([(r.from_step, r.step) for r in records], dtype=np.int64).reshape(-1, 2),
                forwards=ints([r.forwards for r in records]),
                eval_forwards=ints([r.eval_forwards for r in records]),
                grad_checks=ints([r.grad_checks for r in records]),
                eval_steps=ints([s for r in records for s in r.eval_steps]),
                stale_grad_steps=ints([s for r in records for s in r.stale_grad_steps]),
                train_nograd_forwards=ints([r.train_nograd_forwards for r in records]),
                train_nograd_repeats=ints([r.train_nograd_repeats for r in records]),
                output_min=floats([r.output_min for r in records]),
                output_sum_lo=floats([r.output_sum_lo for r in records]),
                output_sum_hi=floats([r.output_sum_hi for r in records]),
                output_cols=ints([r.output_cols or 0 for r in records]))


@dataclass
class Run:
    """Everything known about one training run, as arrays indexed [recorded step, layer|param]."""

    name: str
    path: Path
    header: Header | None
    layers: tuple[LayerInfo, ...] = ()
    params: tuple[ParamInfo, ...] = ()
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))        # (S,)
    layer_stats: dict[str, np.ndarray] = field(default_factory=dict)   # field -> (S, L), NaN = missing
    param_stats: dict[str, np.ndarray] = field(default_factory=dict)   # field -> (S, P), NaN = missing
    grad_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (S,) total grad norm, recorded
    all_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))    # (K,) every step
    all_grad_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))                # (K,)
    lr: list[tuple[float, ...]] = field(default_factory=list)           # per recorded step
    inputs: list[tuple[int, InputStats]] = field(default_factory=list)
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))           # (S,)
    clip_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (S,) grad norm the optimizer saw
    metrics: dict[str, Series] = field(default_factory=dict)
    nonfinite: list[NonFiniteRecord] = field(default_factory=list)
    completed: bool = False
    problems: list[str] = field(default_factory=list)
    ranks: int = 1
    loop: Loop = field(default_factory=Loop)   # the loop's habits (``loop`` records; rank 0's in a merged run)

    @property
    def has_log(self) -> bool:
        return self.header is not None

    @property
    def n_steps(self) -> int:
        """Training steps seen (the last step index + 1), not just the recorded ones."""
        last = [int(a[-1]) for a in (self.all_steps, self.steps) if a.size]
        return max(last) + 1 if last else 0

    @property
    def clipping(self) -> bool:
        """Gradient clipping is active: on some recorded step the optimizer stepped with a smaller total
        gradient norm than backward produced (measured with ``watch(..., optimizer=)``)."""
        n = min(self.clip_norm.size, self.grad_norm.size)
        c, g = self.clip_norm[:n], self.grad_norm[:n]
        ok = np.isfinite(c) & np.isfinite(g)
        return bool(np.any(c[ok] < g[ok] * (1.0 - CLIP_RTOL)))

    @property
    def scaler_passed(self) -> bool:
        """A GradScaler was passed to ``watch(..., scaler=)`` (header ``extra.amp_scaler``; older logs: only
        when a recorded step was flagged ``skipped``)."""
        extra = self.header.extra if self.header is not None else {}
        return extra.get("amp_scaler") is True or bool(self.skipped.size and self.skipped.any())

    def scaler_skipped_steps(self) -> set[int]:
        """Steps the GradScaler passed to watch skipped: the recorded steps flagged ``skipped`` and, when the
        header says a scaler was passed, every step whose total gradient norm is NaN/Inf, recorded or not (the
        scaler skips exactly the steps whose gradients overflowed; a record flags only its own step)."""
        out = set(self.steps[self.skipped].tolist()) if self.skipped.shape == self.steps.shape else set()
        if self.header is not None and self.header.extra.get("amp_scaler") is True and self.all_grad_norm.size:
            out |= set(self.all_steps[~np.isfinite(self.all_grad_norm)].tolist())
        return out

    def layer_index(self, name: str) -> int:
        for i, la in enumerate(self.layers):
            if la.name == name:
                return i
        raise KeyError(name)

    def layer(self, field_name: str) -> np.ndarray:
        """(S, L) array of one per-layer statistic."""
        return self.layer_stats[field_name]

    def param(self, field_name: str) -> np.ndarray:
        """(S, P) array of one per-parameter statistic."""
        return self.param_stats[field_name]


def run_from_log(raw: RawLog, *, name: str | None = None) -> Run:
    """Columns from one rank's records."""
    h = raw.header
    layers = tuple(replace(la, act=raw.activations.get(la.name, la.act)) for la in h.layers)
    meta = raw.step_meta
    steps = np.array([m.step for m in meta], dtype=np.int64)
    lf, pf = list(h.layer_fields), list(h.param_fields)
    # Field-major float64 (``la[field]`` is a contiguous (S, L) block): the rules scan columns, and strided
    # views into an (S, L, F) array made diagnosing a 200 × 10,000 log take 2.5x as long. ``read_log``'s
    # arrays are field-major float64 underneath already: then these are views, no copy.
    la = np.ascontiguousarray(raw.layer_array.transpose(2, 0, 1), dtype=np.float64)
    pa = np.ascontiguousarray(raw.param_array.transpose(2, 0, 1), dtype=np.float64)
    layer_stats = {f: la[lf.index(f)] if f in lf else np.full(la.shape[1:], np.nan) for f in LAYER_FIELDS}
    param_stats = {f: pa[pf.index(f)] if f in pf else np.full(pa.shape[1:], np.nan) for f in PARAM_FIELDS}
    every: dict[int, float] = {}
    for m in meta:
        for s, v in m.grad_norm_steps:
            every[s] = np.nan if v is None else v
        if m.step not in every and m.grad_norm is not None:
            every[m.step] = m.grad_norm
    for s, v in raw.grad_norms:
        every[s] = np.nan if v is None else v
    all_steps = np.array(sorted(every), dtype=np.int64)
    metrics: dict[str, list[tuple[int, float]]] = {}
    for mr in raw.metrics:
        for k, v in mr.values.items():
            metrics.setdefault(k, []).append((mr.step, np.nan if v is None else float(v)))
    return Run(
        name=name if name is not None else raw.path.parent.name,
        path=raw.path.parent,
        header=h,
        layers=layers,
        params=h.params,
        steps=steps,
        layer_stats=layer_stats,
        param_stats=param_stats,
        grad_norm=np.array([np.nan if m.grad_norm is None else m.grad_norm for m in meta], dtype=float),
        all_steps=all_steps,
        all_grad_norm=np.array([every[s] for s in all_steps], dtype=float),
        lr=[m.lr for m in meta],
        inputs=[(m.step, m.input) for m in meta if m.input is not None],
        skipped=np.array([m.skipped for m in meta], dtype=bool),
        clip_norm=np.array([np.nan if m.clip_norm is None else m.clip_norm for m in meta], dtype=float),
        metrics={k: Series(np.array([s for s, _ in v], dtype=np.int64), np.array([x for _, x in v], dtype=float))
                 for k, v in metrics.items()},
        nonfinite=list(raw.nonfinite),
        completed=raw.close is not None,
        problems=list(raw.problems),
        loop=loop_from_records(raw.loops),
    )
