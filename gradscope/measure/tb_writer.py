"""The TensorBoard mirror: gradscope's statistics as panels next to the user's own (write side, torch).

The JSONL log stays the source of truth: TensorBoard's reader stops silently at the first corrupt record, and
the report is judged from the log, never from these files. What is written (docs/tensorboard.md):

* scalars, grouped by statistic so one chart holds every layer: ``grad_norm/<layer>`` (and its log10,
  ``gradscope/log10_grad_norm/<layer>``: vanishing gradients span decades), ``act_std/<layer>``,
  ``dead_pct/<layer>`` (layers followed by a ReLU), ``saturation_pct/<layer>``, ``update_ratio/<param>``,
  ``grad_norm_total`` (every step), ``gradscope/clip/{grad_norm,median,threshold}`` (the suggested clipping
  threshold) and the user's ``scope.log`` values as ``gradscope/<name>``;
* a custom-scalars layout (category ``gradscope``) that puts them on one page;
* histograms ``gradscope/weights/<param>`` and ``gradscope/grads/<param>`` on every ``histograms``-th recorded
  step, with NaN/Inf removed and counted in ``gradscope/nonfinite/{weights,grads}/<param>``;
* an image ``gradscope/gradient_flow`` (layers × recorded steps, colour = log10 gradient norm), and
* the diagnosis as Markdown, ``gradscope/report``, both at ``close()`` and on ``Watch.report()``.

Every tag starts with one of ``tbscalars.GRADSCOPE_TAG_PREFIXES`` and the event file ends with
``GRADSCOPE_EVENT_FILE_SUFFIX``, so ``gradscope report`` never mistakes the mirror for the user's metrics.
Scalars are written with ``add_scalar`` into one event file: ``add_scalars`` would open a writer and a file
per key.

Cost: scalars are written only on recorded steps (the per-step total gradient norms arrive in batches with
each record). Histograms cost a few milliseconds per parameter tensor, so they are taken rarely (every 50th
record by default, i.e. every 1000 steps at ``every=20``), binned on the tensor's device with deterministic
kernels (``bin_tensors``) and passed with ``add_histogram_raw`` (``add_histogram`` bins in numpy on the host:
6–14× a step every step).
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradscope.store.schema import DYING_ACTIVATIONS, LAYER_FIELDS, PARAM_FIELDS, StepRecord
from gradscope.store.tb_scalars import GRADSCOPE_EVENT_FILE_SUFFIX, GRADSCOPE_TAG_PREFIXES

if TYPE_CHECKING:
    from gradscope.judge.thresholds import Thresholds
    from gradscope.show.report import Report

TAG_PREFIXES = GRADSCOPE_TAG_PREFIXES
"""Every tag gradscope writes starts with one of these (the report's TensorBoard reader skips them)."""

DEFAULT_HISTOGRAMS = 50
"""Histograms of weights and gradients on every 50th recorded step (every 1000 steps at the default
``every=20``; the first recorded step always has them). A set of histograms costs about as much as a whole
training step of the benchmark MLP (~5 ms per million values on one CPU core): every 10th record it added
~1.5% to the default overhead, every 50th ~0.3% (docs/performance.md)."""

HISTOGRAM_BINS = 64
"""Uniform bins between the finite min and max; TensorBoard re-bins for display (~30 buckets)."""

REPORT_TAG = "gradscope/report"
FLOW_TAG = "gradscope/gradient_flow"
CLIP_TAGS = ("gradscope/clip/grad_norm", "gradscope/clip/median", "gradscope/clip/threshold")
"""Margin chart: the total gradient norm of each recorded step, inside the band between the median of the
healthy early norms and the suggested ``clip_grad_norm_`` max_norm (their ``clip_percentile``)."""

_L = {f: i for i, f in enumerate(LAYER_FIELDS)}
_P = {f: i for i, f in enumerate(PARAM_FIELDS)}

def layout(category: str = "gradscope") -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one chart per statistic over every layer (regexes are anchored, so a
    user's ``param_grad_norm/...`` tag does not land in the ``grad_norm/`` chart)."""
    return {category: {
        "gradient norm per layer (||dL/d output||)": ["Multiline", [r"^grad_norm/"]],
        "log10 gradient norm per layer": ["Multiline", [r"^gradscope/log10_grad_norm/"]],
        "activation std per layer": ["Multiline", [r"^act_std/"]],
        "dead units % per layer (ReLU never positive)": ["Multiline", [r"^dead_pct/"]],
        "saturated units % per layer (sigmoid/tanh)": ["Multiline", [r"^saturation_pct/"]],
        "update-to-weight ratio per parameter (||Δw||/||w||)": ["Multiline", [r"^update_ratio/"]],
        "total gradient norm vs suggested clipping threshold": ["Margin", list(CLIP_TAGS)],
        "total gradient norm (every step)": ["Multiline", [r"^grad_norm_total$"]],
        "loss (scope.log)": ["Multiline", [r"^gradscope/.*loss$"]],
        "accuracy / error (scope.log)": ["Multiline", [r"^gradscope/.*(acc|error)$"]],
        "non-finite values left out of histograms": ["Multiline", [r"^gradscope/nonfinite/"]],
    }}


class TensorBoardMirror:
    """Writes the panels for one ``Watch``. Created and driven by ``gradscope.measure.watch.Watch``."""

    def __init__(self, logdir: str | os.PathLike[str], layers: Sequence[Any], param_names: Sequence[str], *,
                 histograms: int | None = DEFAULT_HISTOGRAMS, thresholds: Thresholds | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self._w: Any = SummaryWriter(log_dir=str(self.logdir), filename_suffix=GRADSCOPE_EVENT_FILE_SUFFIX)
        self._layers = [getattr(la, "name", str(la)) or "root" for la in layers]
        # The layer specs: their ``act`` (the following activation) is learned on the first forward pass.
        # Dropped at close(), so the mirror never keeps the user's modules alive.
        self._specs: list[Any] = list(layers)
        self._params = list(param_names)
        if histograms is not None and (isinstance(histograms, bool) or int(histograms) < 0):
            raise ValueError(f"histograms must be None, 0 (off) or a positive record interval, got {histograms!r}")
        self.histograms = int(histograms or 0)
        if thresholds is None:   # judge/ is imported lazily: the write side needs only its numbers
            from gradscope.judge.thresholds import Thresholds

            thresholds = Thresholds()
        self._th = thresholds
        self._pending: tuple[int, list[Histogram]] | None = None
        self._norms = array("d")              # every step's finite positive total gradient norm, in order
        self._flow_steps: list[int] = []
        self._flow: list[list[float]] = []    # per recorded step, per layer: ||dL/d output||
        self._last_step = 0
        self._closed = False
        self._buf: dict[int, list[tuple[str, float]]] = {}   # step → scalars not yet written
        self._w.add_custom_scalars(layout())

    # ------------------------------------------------------------------------------------------ scalars
    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None and math.isfinite(value):
            self._buf.setdefault(step, []).append((tag, float(value)))

    def _emit(self) -> None:
        """Write the buffered scalars, one event per step: ``add_scalar`` builds an event per value (~60 µs
        each here, 17× a value in a shared event), and a record carries dozens of values."""
        if not self._buf:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]

        writer = self._w._get_file_writer()
        for step, values in self._buf.items():
            writer.add_summary(Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values]), step)
        self._buf = {}

    def step(self, rec: StepRecord) -> None:
        """Mirror one step record (and the histograms captured for it, if any)."""
        s = rec.step
        self._last_step = max(self._last_step, s)
        flow: list[float] = []
        for i, (name, row) in enumerate(zip(self._layers, rec.layers, strict=False)):
            if row is None:
                flow.append(math.nan)
                continue
            g = row[_L["grad_norm"]]
            flow.append(math.nan if g is None else float(g))
            self._scalar(f"grad_norm/{name}", g, s)
            if g is not None and g > 0:
                self._scalar(f"gradscope/log10_grad_norm/{name}", math.log10(g), s)
            var = row[_L["var"]]
            self._scalar(f"act_std/{name}", None if var is None else math.sqrt(var), s)
            units, dead, sat = row[_L["units"]], row[_L["dead"]], row[_L["saturated"]]
            if units and dead is not None and self._dying(i):
                self._scalar(f"dead_pct/{name}", 100.0 * dead / units, s)
            if units and sat is not None:
                self._scalar(f"saturation_pct/{name}", 100.0 * sat / units, s)
        flow += [math.nan] * (len(self._layers) - len(flow))
        self._flow_steps.append(s)
        self._flow.append(flow)
        for name, prow in zip(self._params, rec.params, strict=False):
            if prow is not None:
                self._scalar(f"update_ratio/{name}", prow[_P["update_ratio"]], s)
        for step, v in rec.grad_norm_steps:
            self._scalar("grad_norm_total", v, step)
            if v is not None and math.isfinite(v) and v > 0:
                self._norms.append(v)
        self._clip_margin(s, rec.grad_norm)
        self._emit()
        self._flush_histograms(s)

    def _dying(self, i: int) -> bool:
        """Dead units only mean something before a ReLU: a negative sigmoid/tanh input is not a dead unit
        (the same rule as the report's layer table)."""
        spec = self._specs[i] if i < len(self._specs) else None
        act = getattr(spec, "act", None)
        return act in DYING_ACTIVATIONS or type(getattr(spec, "module", None)).__name__ in ("ReLU", "ReLU6")

    def grad_norms(self, steps: Sequence[tuple[int, float | None]]) -> None:
        """Total gradient norms of the steps after the last record (written by ``close()``)."""
        for step, v in steps:
            self._scalar("grad_norm_total", v, step)
            self._last_step = max(self._last_step, step)
        self._emit()

    def _clip_margin(self, step: int, value: float | None) -> None:
        """The suggested clipping threshold as the run goes: the ``clip_percentile`` of the early window of
        the norms seen so far (``gradscope.judge.fixes.suggest_max_norm`` on the run so far), with the window's
        median as the band's floor. It settles once the early window has filled; the report gives the
        final value."""
        if value is None or not math.isfinite(value) or len(self._norms) < self._th.early_min_steps:
            return
        n = len(self._norms)
        k = min(n, max(self._th.early_min_steps, math.ceil(n * self._th.early_fraction)))
        early = np.frombuffer(self._norms, dtype=np.float64, count=k)
        threshold = float(np.percentile(early, self._th.clip_percentile))
        median = float(np.median(early))
        for tag, v in zip(CLIP_TAGS, (value, median, threshold), strict=True):
            self._scalar(tag, v, step)

    def metrics(self, step: int, values: Mapping[str, float | None]) -> None:
        for k, v in values.items():
            self._scalar(f"gradscope/{k}", v, step)
        self._emit()

    # -------------------------------------------------------------------------------------- histograms
    def histogram_due(self, record_index: int) -> bool:
        """Whether the recorded step with this index (0, 1, 2, ... over recorded steps) gets histograms."""
        return self.histograms > 0 and record_index % self.histograms == 0

    def capture(self, step: int, params: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Bin the weights and gradients of ``step`` now: called at the end of backward, when the gradients
        are complete and not yet zeroed or stepped with (the weights are the ones this step's forward used).
        Costs two host transfers, on histogram steps only. The histograms are written with the step's record;
        a second backward in the same step (gradient accumulation) replaces the first."""
        tensors: list[tuple[str, str, torch.Tensor]] = []
        for name, p in params:
            tensors.append(("weights", name, p.detach()))
            if p.grad is not None:
                tensors.append(("grads", name, p.grad.detach()))
        with torch.no_grad():
            self._pending = (step, bin_tensors(tensors))

    def _flush_histograms(self, step: int) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != step:
            return
        try:
            self._write_histograms(step, pending[1])
        finally:
            self._emit()

    def _write_histograms(self, step: int, hists: list[Histogram]) -> None:
        for h in hists:
            if h.nonfinite:
                self._scalar(f"gradscope/nonfinite/{h.kind}/{h.name}", float(h.nonfinite), step)
            if h.num == 0:
                continue
            if h.hi > h.lo:
                limits = [h.lo + (h.hi - h.lo) * (k + 1) / len(h.counts) for k in range(len(h.counts))]
                counts = h.counts
            else:   # a constant tensor (a zero-initialized bias): one bucket
                limits, counts = [h.hi], [float(h.num)]
            self._w.add_histogram_raw(f"gradscope/{h.kind}/{h.name}", min=h.lo, max=h.hi, num=h.num, sum=h.sum,
                                      sum_squares=h.sum_squares, bucket_limits=limits, bucket_counts=counts,
                                      global_step=step)

    # ------------------------------------------------------------------------------ image, text, close
    def gradient_flow(self) -> np.ndarray | None:
        """The gradient-flow image (H, W, 3) uint8, or None before the first record with a gradient."""
        if not self._flow:
            return None
        from gradscope.show.tb_summary import render_gradient_flow

        return render_gradient_flow(np.array(self._flow, dtype=float).T, self._flow_steps, self._layers)

    def write_summary(self, report: Report | None = None) -> None:
        """Write the gradient-flow image and (when given) the report's Markdown at the last step."""
        img = self.gradient_flow()
        if img is not None:
            self._w.add_image(FLOW_TAG, img, self._last_step, dataformats="HWC")
        if report is not None:
            self._w.add_text(REPORT_TAG, report.to_markdown(), self._last_step)
        self._w.flush()

    def close(self, *, report: bool = True) -> None:
        """Write the gradient-flow image and the diagnosis of ``logdir`` (read back from the closed log),
        then close the event file. Safe to call twice; a failing diagnosis never fails the training run."""
        if self._closed:
            return
        self._closed = True
        try:
            from gradscope.show.tb_summary import diagnose_logdir

            rep = diagnose_logdir(self.logdir) if report else None
            self.write_summary(rep)
        finally:
            self._pending = None
            self._specs = []
            self._emit()
            self._w.close()


@dataclass(frozen=True)
class Histogram:
    """The histogram of one tensor's finite values, and how many values were not finite (left out)."""

    kind: str              # "weights" or "grads"
    name: str              # parameter name
    lo: float              # finite min
    hi: float              # finite max
    num: int               # finite values
    sum: float
    sum_squares: float
    counts: list[float]    # HISTOGRAM_BINS uniform bins over [lo, hi]
    nonfinite: int         # NaN/Inf values, not in the bins


def bin_tensors(tensors: Sequence[tuple[str, str, torch.Tensor]], bins: int = HISTOGRAM_BINS) -> list[Histogram]:
    """Histograms of many tensors, binned on their device; NaN/Inf are counted apart.

    Binning is ``floor((x - lo) * bins / (hi - lo))`` clamped to the last bin (what ``torch.histc`` does),
    counted with ``torch.bincount`` without weights: integer counts, deterministic on CUDA.
    ``torch.histc`` has no deterministic CUDA kernel, so under ``torch.use_deterministic_algorithms(True)``
    it raised inside the user's backward (``reductions.NONDETERMINISTIC_CUDA_OPS``).

    Host transfers: one for every tensor's [min, max, sum] together, one more for the (rare) tensors whose
    sum is not finite (their finite range and NaN/Inf count), one for every tensor's bins together (CUDA's
    ``bincount`` also reads its input's max to size its output: histogram steps are rare, every
    ``DEFAULT_HISTOGRAMS``-th record, and sync at these transfers anyway).
    """
    if not tensors:
        return []
    # Views in each tensor's own dtype: an fp32 copy is made one tensor at a time, while binning it, never of
    # every weight and gradient at once (with bf16 weights that was twice the model in fp32 on this step).
    flats = [t.reshape(-1) for _, _, t in tensors]
    host = torch.device("cpu")
    first = torch.stack([torch.stack([x.amin(), x.amax(), x.sum(dtype=torch.float32)]).double().cpu()
                         if x.numel() else torch.full((3,), math.nan, dtype=torch.float64, device=host)
                         for x in flats]).tolist()
    ranges: list[tuple[float, float, int]] = []
    exact: dict[int, torch.Tensor] = {}
    for i, (x, (lo, hi, total)) in enumerate(zip(flats, first, strict=True)):
        if x.numel() and not math.isfinite(total):   # NaN/Inf inside (or a finite overflow): exact path
            fin = torch.isfinite(x)
            exact[i] = torch.stack([torch.where(fin, x, math.inf).min().double(),
                                    torch.where(fin, x, -math.inf).max().double(),
                                    (~fin).sum().double()]).cpu()
        ranges.append((lo, hi, 0))
    if exact:
        for i, v in zip(exact, torch.stack(list(exact.values())).tolist(), strict=True):
            ranges[i] = (v[0], v[1], int(v[2]))
    rows: list[torch.Tensor] = []
    for i, (x, (lo, hi, _)) in enumerate(zip(flats, ranges, strict=True)):
        xf = x[torch.isfinite(x)] if i in exact else x
        if xf.numel() == 0:
            rows.append(torch.zeros(bins + 3, dtype=torch.float64, device=host))
            continue
        xf = xf.float()   # this tensor's fp32 copy (none for fp32), freed before the next one
        counts = _bin(xf, bins, lo, hi) if hi > lo else torch.zeros(bins, device=xf.device)
        moments = torch.stack([xf.new_full((), float(xf.numel())), xf.sum(), torch.dot(xf, xf)])
        rows.append(torch.cat([moments, counts]).double().cpu())
    values = torch.stack(rows).tolist()
    out = []
    for (kind, name, _), (lo, hi, bad), row in zip(tensors, ranges, values, strict=True):
        out.append(Histogram(kind=kind, name=name, lo=lo, hi=hi, num=int(row[0]), sum=row[1], sum_squares=row[2],
                             counts=row[3:], nonfinite=bad))
    return out


def _bin(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """fp32 counts of the finite fp32 values ``x`` in ``bins`` uniform bins over [lo, hi] (hi > lo), as
    ``torch.histc`` counts them, with deterministic kernels only. One fp32 and one int64 temporary the size of
    ``x`` (histogram steps only); the maximum lands in the last bin, like ``histc``."""
    scale = bins / (hi - lo)
    idx = (x - lo).mul_(scale).floor_().clamp_(0, bins - 1).long()
    return torch.bincount(idx, minlength=bins)[:bins].float()
