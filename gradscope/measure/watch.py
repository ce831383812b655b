"""The handle: ``watch(model)`` attaches hooks, finds step boundaries, records statistics, writes the log.

How a step is found: a training step is the work between two training-mode forward passes of the root
module (``model.training`` and grad enabled), or, with ``optimizer=``, between two optimizer steps (so
gradient accumulation counts as one step). Forward passes in ``eval()`` mode or under ``torch.no_grad()``
never count and never touch the statistics.

What it costs: on steps that are not recorded, each layer hook adds one ``sum`` (the NaN/Inf probe) and the
end of backward one ``_foreach_norm`` over the gradients (the total gradient norm of every step, for the
clipping threshold); on recorded steps, a handful of cheap reductions per layer and ONE host transfer.
Statistics stay on the device until then (docs/performance.md).

What it never does: change a value the model computes, a gradient, or the global RNG; write attributes onto
the user's modules; keep the model alive after ``close()``.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradscope._version import __version__
from gradscope.errors import GradscopeError, GradscopeWarning
from gradscope.measure.layers import LayerFilter, LayerSpec, all_tensors, find_layers, first_tensor
from gradscope.measure.reductions import (
    LayerAcc,
    accumulate_derivative,
    accumulate_grad,
    accumulate_output,
    finite_probe,
    input_stats,
    saturating,
)
from gradscope.measure.tb_writer import DEFAULT_HISTOGRAMS
from gradscope.measure.tracer import ActivationTracer
from gradscope.store.jsonl import LogWriter, log_path
from gradscope.store.schema import (
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

if TYPE_CHECKING:
    from gradscope.show.report import Report

DEFAULT_EVERY = 20
"""Record every 20th step by default. A recorded step costs ~20% of a step of the benchmark MLP, and the
every-step checks (a ``sum`` per layer, one read of the gradients for NaN/Inf and the total gradient norm)
another 2–4%: every 10th step measured 1.05–1.07× on that MLP, every 20th stays within the 1.05× budget
(docs/performance.md). A 400-step run still gives 24 records; Lightning logs every 50 steps by default."""

DEFAULT_WARMUP = 5
"""The first steps are always recorded: initialization problems show in the first few steps."""

DEFAULT_DEAD_WINDOW = 5
"""A unit is dead when it was not positive for any sample in 5 consecutive recorded steps (5 batches, a few
hundred samples at least): a live ReLU unit on a non-degenerate batch fires for some sample almost surely."""

DEFAULT_SATURATION_DERIVATIVE = 0.1
"""A unit is saturated when its mean derivative, normalized to the activation's maximum slope (tanh' ≤ 1,
sigmoid' ≤ 0.25), is below 0.1: a tenth of the linear-regime gradient passes (|z| ≳ 1.8 for tanh, 3.6 for
sigmoid). Glorot & Bengio (2010) show top sigmoid layers pinned at 0 with near-zero gradients."""

UPDATE_SAMPLE = 8192
"""Update-to-weight ratios are computed on a fixed sample of at most 8192 entries per parameter (exact for
smaller tensors): ||Δw||/||w|| is a ratio, so a sample of that size estimates it within ~2% for dense updates,
and no copy of the weights is kept (a copy would add a model's size to peak memory)."""

UPDATE_BLOCKS = 256
"""The sample is 256 evenly spaced runs of 32 contiguous entries (two cache lines each), not 8192 scattered
ones: a scattered gather right after backward cost ~130 µs per weight matrix here, the runs a few µs, and 256
runs still spread over the whole tensor (256 different rows of a weight matrix, so per-unit differences in
update size average out: on the 9000×300 layer of tests/test_watch.py, 64 runs of 128 were 7% off the exact
ratio, 256 runs of 32 within the test's 5%)."""

INPUT_STATS_STEPS = 5
"""Input statistics are taken on the first 5 recorded steps: the data distribution does not drift within a
run the way activations do, and per-feature moments of the input are the costliest statistic."""


def _rank() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - a broken distributed install must not stop training
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _optimizer_meta(opt: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    if opt is None:
        return None
    groups = []
    for g in opt.param_groups:
        groups.append({k: _plain(v) for k, v in g.items() if k != "params" and _plain(v) is not None})
    return {"class": type(opt).__name__, "groups": groups}


def _plain(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    if isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) for x in v):
        return list(v)
    if isinstance(v, str):
        return v
    return None


class Watch:
    """A watched model: attach gradscope to ``model`` and log its training health to ``logdir``.

    ``close()`` (or leaving a ``with`` block) removes every hook; it is safe to call twice.

    ``every``: record statistics every N training steps (the first ``warmup`` steps are always recorded).
    ``layers``: which layers to watch: a regex or glob over module names, a list of globs, or
    ``callable(name, module) -> bool``. ``tensorboard``: mirror the statistics into TensorBoard event files
    in ``logdir``. ``histograms``: TensorBoard histograms of weights and gradients on every N-th recorded
    step (``None``/0: none). ``optimizer``: make optimizer steps the step boundaries (gradient accumulation = one
    step) and record learning rates. ``check_finite``: find the first NaN/Inf on every step (a ``sum`` per
    layer per step and one read of all gradients, which also gives the total gradient norm of every step);
    ``False`` checks and records gradient norms on recorded steps only (the cheapest setting: see
    docs/performance.md). ``scaler``: the ``torch.amp.GradScaler`` of a mixed-precision loop: gradient norms are
    recorded unscaled (divided by the scale on the device, no sync) and steps the scaler skipped (inf/NaN
    gradients) are labelled ``skipped`` instead of being reported as a NaN/Inf. See docs/setups.md for
    torch.compile, DDP/FSDP2 and AMP.
    """

    path: Path   # the JSONL log; declared here because __init__ reads it on another Watch before setting its own

    def __init__(
        self,
        model: nn.Module,
        logdir: str | os.PathLike[str] = "runs/gradscope",
        *,
        every: int = DEFAULT_EVERY,
        warmup: int = DEFAULT_WARMUP,
        layers: LayerFilter = None,
        tensorboard: bool = True,
        histograms: int | None = DEFAULT_HISTOGRAMS,
        optimizer: torch.optim.Optimizer | None = None,
        dead_window: int = DEFAULT_DEAD_WINDOW,
        saturation_derivative: float = DEFAULT_SATURATION_DERIVATIVE,
        check_finite: bool = True,
        scaler: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"gradscope.watch() needs a torch.nn.Module, got {type(model).__name__}: {model!r:.80}")
        if every < 1 or warmup < 0 or dead_window < 1:
            raise ValueError("every and dead_window must be >= 1 and warmup >= 0")
        for h in model._forward_pre_hooks.values():
            other = getattr(h, "__self__", None)
            if isinstance(other, Watch) and not other.closed:
                raise GradscopeError(f"this model is already watched by gradscope (log {other.path}); "
                                     "close() that watch first")
        self.every, self.warmup = int(every), int(warmup)
        self.dead_window = int(dead_window)
        self.saturation_derivative = float(saturation_derivative)
        self.check_finite = check_finite
        self.rank, self.world_size = _rank()
        self._scaler_obj = scaler   # holds no model reference; dropped by close()
        self._scale_seen: tuple[int, int] | None = None   # (id, _version) of the scaler's scale at backward
        self._skip_now = False                 # this step was skipped by the scaler (seen sync-free)
        self._skipped: set[int] = set()         # steps whose gradients were non-finite under the scaler
        self._pre: torch.Tensor | None = None  # per-parameter grad norms at optimizer-step time
        # Distributed: read gradients after DDP/FSDP have reduced them (see _end_of_backward).
        self._defer = self.world_size > 1 or isinstance(model, nn.parallel.DistributedDataParallel)
        self._late = False
        self._tracing = False
        inner = getattr(model, "_orig_mod", model)   # torch.compile's OptimizedModule: watch the model inside
        self.logdir = Path(logdir)
        self.path = log_path(self.logdir, self.rank)
        self._model_ref = weakref.ref(model)
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self._t0 = time.perf_counter()
        self._closed = False
        self._handles: list[RemovableHandle] = []

        self._layers: list[LayerSpec] = find_layers(inner, layers)
        named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
        self._param_names = [n for n, _ in named]
        self._params: list[torch.nn.Parameter] = [p for _, p in named]
        owner = {pn: la.name for la in self._layers for pn in la.params}
        self._param_layer = [owner.get(n) for n in self._param_names]
        self._samples: list[tuple[int, int] | None] = self._sample_layout()

        # Per-step state. ``_step`` is the index of the open (or last) step; -1 before the first.
        self._step = -1
        self._open = False
        self._rec = False
        self._rec_idx = -1
        self._in_fwd = False
        self._acc: dict[int, LayerAcc] = {}
        self._probes: list[tuple[int, torch.Tensor]] = []
        self._pgn: tuple[list[int], torch.Tensor] | None = None    # (param indices, norms) of this step
        # Per-step checks since the last record, kept on the device and read at the next record (no host sync
        # per step): (step, kind, indices, values) with kind 0 = layer-output probes, 1 = parameter gradient
        # norms, 2 = model-output probes. The gradient norms also give the total gradient norm of every step.
        self._checks: list[tuple[int, int, list[int], torch.Tensor]] = []
        self._snap: list[torch.Tensor] | None = None
        self._wnorm: tuple[torch.Tensor, ...] | None = None
        self._input: torch.Tensor | None = None
        self._last_active: dict[int, torch.Tensor] = {}
        self._nf_written = False
        self._bwd_queued = False
        self._tracer: ActivationTracer | None = ActivationTracer()
        self._acts: dict[str, str] = {}

        self._writer = LogWriter(self.path)   # fails here, at attach, when the logdir is unwritable
        self._tb = None
        if tensorboard and self.rank == 0:   # one mirror per run: rank 0's; every rank writes its own log
            from gradscope.measure.tb_writer import TensorBoardMirror

            self._tb = TensorBoardMirror(self.logdir, self._layers, self._param_names, histograms=histograms)
        self._writer.write(self._header(inner, optimizer).to_dict())
        self._attach(model, optimizer)

    # ----------------------------------------------------------------------------------------- public API
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def step(self) -> int:
        """Index of the current (or last) training step; -1 before the first."""
        return self._step

    @property
    def layers(self) -> list[str]:
        return [la.name for la in self._layers]

    def log(self, step: int | None = None, **metrics: float | torch.Tensor) -> None:
        """Record user scalars (``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``, ``train_error``,
        ``val_error`` feed the fit rules; any other name is kept and mirrored). Tensors are read with one
        ``.item()`` each, so log per epoch, or pass Python floats."""
        if self._closed:
            raise GradscopeError("this gradscope watch is closed; log() after close() is lost")
        values: dict[str, float | None] = {}
        for k, v in metrics.items():
            try:
                f = float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"gradscope: log({k}=...) needs a number or a one-element tensor, "
                                f"got {type(v).__name__}") from None
            values[k] = f
        s = max(self._step, 0) if step is None else int(step)
        self._writer.write(MetricsRecord(step=s, values=values).to_dict())
        if not self._nf_written and any(k.endswith("loss") and v is not None and not math.isfinite(v)
                                        for k, v in values.items()):
            self._write_nonfinite(NonFiniteRecord(step=s, where="loss"))
        if self._tb is not None:
            self._tb.metrics(s, values)

    def report(self) -> Report:
        """Diagnose the run so far from its log (``gradscope report`` on it) and, with TensorBoard on, write
        the diagnosis and the gradient-flow image to TensorBoard now."""
        from gradscope.show.tb_summary import diagnose_logdir

        rep = diagnose_logdir(self.logdir)
        if rep is None:
            raise GradscopeError(f"gradscope: cannot diagnose {self.logdir}")
        if self._tb is not None and not self._closed:
            self._tb.write_summary(rep)
        return rep

    def close(self) -> None:
        """Finish the open step, remove every hook, flush and close the files. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._open and (self._optimizer_ref is None or self._pgn is not None):
                self._end_step()
            tail = self._flush_checks()
            if tail:   # total gradient norms of the steps after the last record
                self._writer.write({"kind": "grad_norms", "steps": [[st, v] for st, v in tail]})
                if self._tb is not None:
                    self._tb.grad_norms(tail)
            self._writer.write(CloseRecord(step=self._step, time=time.perf_counter() - self._t0).to_dict())
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            if self._tracer is not None:
                self._tracer.release()
                self._tracer = None
            self._writer.close()
            if self._tb is not None:
                self._tb.close()
            # Drop every reference into the user's model and data.
            self._layers, self._params, self._acc, self._probes = [], [], {}, []
            self._snap = self._wnorm = self._input = None
            self._pgn = self._pre = self._scaler_obj = None
            self._last_active.clear()
            self._checks.clear()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # a watch the user forgot to close must not leave hooks behind
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self._step}"
        return f"<gradscope.Watch {len(self._layers)} layers, every {self.every}, {state}, log {self.path}>"

    # ------------------------------------------------------------------------------------------- attach
    def _header(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Header:
        with torch.no_grad():
            local = [_local(p.detach()) for p in self._params]
            moments = [torch.std_mean(p.float(), correction=0) if p.numel() > 1
                       else (torch.zeros(()), p.float().reshape(())) for p in local]
            flat = torch.stack([torch.stack([m.cpu(), s.cpu()]) for s, m in moments]).tolist() if moments else []
        params = tuple(
            ParamInfo(name=n, layer=la, shape=tuple(p.shape), numel=p.numel(),
                      init_mean=_finite(ms[0]), init_std=_finite(ms[1]))
            for n, la, p, ms in zip(self._param_names, self._param_layer, self._params, flat, strict=True))
        layers = tuple(LayerInfo(name=s.name, type=type(s.module).__name__, fan_in=s.fan_in, fan_out=s.fan_out,
                                 unit_dim=s.unit_dim, params=s.params, weight=s.weight) for s in self._layers)
        return Header(
            schema=1, gradscope=__version__, torch=torch.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), rank=self.rank,
            world_size=self.world_size, every=self.every, warmup=self.warmup, dead_window=self.dead_window,
            saturation_derivative=self.saturation_derivative,
            step_unit="optimizer" if optimizer is not None else "forward", model=type(model).__name__,
            layers=layers, params=params, optimizer=_optimizer_meta(optimizer),
            extra={"python": platform.python_version(), "device": str(self._params[0].device) if self._params
                   else "cpu", "update_sample": UPDATE_SAMPLE,
                   "sharded": any(_local(p) is not p for p in self._params)},
        )

    def _sample_layout(self) -> list[tuple[int, int] | None]:
        """Per parameter: None (small: sampled whole) or (stride, run length) of its evenly spaced runs."""
        out: list[tuple[int, int] | None] = []
        run = UPDATE_SAMPLE // UPDATE_BLOCKS
        for p in self._params:
            n = _local(p).numel()
            out.append(None if n <= UPDATE_SAMPLE else (n // UPDATE_BLOCKS, run))
        return out

    def _attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        h = self._handles
        h.append(model.register_forward_pre_hook(self._root_pre))
        h.append(model.register_forward_hook(self._root_post, always_call=True))
        for spec in self._layers:
            h.append(spec.module.register_forward_hook(self._layer_hook(spec.index)))
        if optimizer is not None:
            h.append(optimizer.register_step_pre_hook(self._optimizer_pre))
            h.append(optimizer.register_step_post_hook(self._optimizer_post))

    # ------------------------------------------------------------------------------------- step control
    def _root_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if torch.compiler.is_compiling():
            return   # traced by torch.compile (a torch.nn container as root): no Python state in a graph
        if self._in_fwd or not (module.training and torch.is_grad_enabled()):
            return
        if self._open and (self._optimizer_ref is None or self._scaler_skipped()):
            self._end_step()
        if not self._open:
            self._begin_step()
        self._in_fwd = True
        if self._rec and self._rec_idx < INPUT_STATS_STEPS and self._input is None:
            x = first_tensor(args)
            if x is not None and x.is_floating_point():
                with torch.no_grad():
                    self._input = input_stats(x)
        # Under torch.compile the tracer (a TorchFunctionMode) would be traced into the graph: skip it there.
        self._tracing = self._tracer is not None and not _compile_region(module)
        if self._tracing and self._tracer is not None:
            self._tracer.__enter__()

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if torch.compiler.is_compiling():
            # Traced into a torch.compile graph (a model compiled after watch()): no Python state in here. A hook
            # on the outputs runs eagerly in backward and opens the step there (_compiled_step).
            if self._params and module.training and torch.is_grad_enabled():
                for t in all_tensors(output):
                    if t.is_floating_point() and t.requires_grad:
                        t.register_hook(self._compiled_step)
            return
        if not self._in_fwd:
            return
        self._in_fwd = False
        tracer = self._tracer
        if tracer is not None and self._tracing:
            self._tracing = False
            tracer.__exit__(None, None, None)
            self._acts = {self._layers[i].name: a for i, a in tracer.acts.items()}
            for i, a in tracer.acts.items():
                self._layers[i].act = a
                acc = self._acc.get(i)
                if acc is not None and saturating(a):
                    # The hook ran before the activation was known: add this pass's derivative now, from the
                    # outputs the tracer kept (unless an in-place op has changed them since).
                    with torch.no_grad():
                        for t, version in tracer.layer_outputs.get(i, []):
                            if t._version == version:
                                accumulate_derivative(acc, t, unit_dim=self._layers[i].unit_dim, act=a)
            tracer.release()
            self._tracer = None
            self._writer.write(activations_record(self._acts))
        outs = [t for t in all_tensors(output) if t.is_floating_point()]
        with torch.no_grad():
            if self.check_finite:
                self._check_forward(outs)
        if self._params:
            for t in outs:
                if t.requires_grad:
                    t.register_hook(self._output_grad)

    def _begin_step(self) -> None:
        self._step += 1
        self._open = True
        self._rec = self._step < self.warmup or self._step % self.every == 0
        self._acc = {}
        self._probes = []
        self._pgn = None
        self._input = None
        self._pre = None
        self._skip_now = False
        self._scale_seen = None
        if self._rec:
            self._rec_idx += 1
            with torch.no_grad():
                self._snap = [self._sample(i, p) for i, p in enumerate(self._params)]
                self._wnorm = torch._foreach_norm([_local(p.detach()) for p in self._params]) if self._params else None

    def _sample(self, i: int, p: torch.Tensor) -> torch.Tensor:
        flat = _local(p.detach()).reshape(-1)
        layout = self._samples[i]
        if layout is None:
            return flat.to(torch.float32, copy=True)
        stride, run = layout
        return flat.as_strided((UPDATE_BLOCKS, run), (stride, 1)).to(torch.float32, copy=True)

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """On recorded steps, the gradient norms the optimizer is about to use (after the user's clipping and
        the GradScaler's unscaling): below the end-of-backward norms means gradient clipping is active."""
        closure = kwargs.get("closure") if kwargs else (args[0] if args else None)
        if closure is not None:
            return   # step(closure): backward has not run yet; _optimizer_post reads the gradients instead
        if self._open and self._rec and self._pgn is not None:
            grads = [self._params[i].grad for i in self._pgn[0]]
            if all(g is not None for g in grads):
                with torch.no_grad():
                    self._pre = _norms([_local(g) for g in grads if g is not None])

    def _scaler(self) -> Any:
        scaler = self._scaler_obj
        if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
            return None
        return scaler

    def _unscale(self, norms: torch.Tensor) -> torch.Tensor:
        """Norms of scaled gradients ÷ the GradScaler's scale, on the device (no sync). At the end of backward
        gradients are always still scaled: ``unscale_`` can only run after backward."""
        scaler = self._scaler()
        if scaler is None:
            return norms
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            self._scale_seen = (id(scale), scale._version)
            return norms / scale.to(device=norms.device, dtype=norms.dtype)
        get = getattr(scaler, "get_scale", None)   # a scaler-like object without a scale tensor: one host read
        return norms / float(get()) if get is not None else norms

    def _scaler_skipped(self) -> bool:
        """With ``optimizer=``: the scaler ran ``update()`` since this step's backward (its scale tensor changed
        version, read without a sync) but the optimizer never stepped: the scaler skipped the step."""
        scaler = self._scaler()
        scale = getattr(scaler, "_scale", None) if scaler is not None else None
        if self._scale_seen is None or not isinstance(scale, torch.Tensor):
            return False
        if (id(scale), scale._version) != self._scale_seen:
            self._skip_now = True
            return True
        return False

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._open:
            if self._pre is None:
                # ``step(closure)`` (Lightning, LBFGS): the pre-step hook ran before the closure's backward.
                # torch's optimizers do not modify ``.grad``, so after the step it still holds what they used.
                self._optimizer_pre(optimizer, (), {})
            self._end_step()

    # ------------------------------------------------------------------------------------------ hooks
    def _layer_hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if torch.compiler.is_compiling() or not self._in_fwd:
                return   # inside a torch.compile graph layer hooks do nothing (docs/setups.md)
            x = first_tensor(output)
            if x is None or not x.is_floating_point():
                return
            if self._tracer is not None:
                self._tracer.register(x, index)
            with torch.no_grad():
                if self.check_finite:
                    self._probes.append((index, finite_probe(x)))
                if self._rec:
                    spec = self._layers[index]
                    acc = self._acc.setdefault(index, LayerAcc())
                    accumulate_output(acc, x, unit_dim=spec.unit_dim, act=spec.act)
            if self._rec and x.requires_grad:
                step = self._step
                x.register_hook(lambda g: self._grad_hook(index, step, g))

        return hook

    def _grad_hook(self, index: int, step: int, g: torch.Tensor) -> None:
        if step == self._step and self._open and index in self._acc:
            with torch.no_grad():
                accumulate_grad(self._acc[index], g)

    def _compiled_step(self, g: torch.Tensor) -> None:
        """First output gradient of a backward whose forward ran inside a compiled graph (the root's hooks were
        traced, so no step was opened in forward): a step is one backward, or one optimizer step."""
        if self._closed or self._bwd_queued:
            return
        if self._open and self._optimizer_ref is None:
            self._end_step()
        if not self._open:
            self._begin_step()
        self._output_grad(g)

    def _output_grad(self, g: torch.Tensor) -> None:
        if not self._bwd_queued and self._open:
            self._bwd_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        """Runs once when the whole backward pass is done: gradients are accumulated, not yet clipped."""
        self._bwd_queued = False
        if not self._open:
            return
        if self._defer and not self._late:
            # DDP and FSDP reduce gradients in end-of-backward callbacks of their own, queued during this
            # backward, so here the gradients are still local; a callback queued now runs after theirs.
            self._late = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            return
        self._late = False
        if not (self._rec or self.check_finite or self._scaler_obj is not None):
            # Nothing needs the gradients of this step: with check_finite=False the every-step read of all
            # gradients (NaN/Inf check, total gradient norm of every step) is skipped on unrecorded steps.
            return
        idx = [i for i, p in enumerate(self._params) if p.grad is not None]
        if not idx:
            return
        with torch.no_grad():
            grads = [_local(g) for i in idx if (g := self._params[i].grad) is not None]
            norms = self._unscale(_norms(grads))
            self._pgn = (idx, norms)
            if self._tb is not None and self._rec and self._tb.histogram_due(self._rec_idx):
                self._tb.capture(self._step, [(self._param_names[i], self._params[i]) for i in idx])
            if self._checks and self._checks[-1][:2] == (self._step, 1):
                self._checks.pop()    # another backward in the same step (accumulation): the last one counts
            self._checks.append((self._step, 1, idx, norms))

    # ------------------------------------------------------------------------------- non-finite values
    def _check_forward(self, outs: list[torch.Tensor]) -> None:
        if self._nf_written:
            return   # the first NaN/Inf is already known; later ones add nothing
        if self._probes:
            self._checks.append((self._step, 0, [i for i, _ in self._probes],
                                 torch.stack([p for _, p in self._probes])))
        elif outs:
            self._checks.append((self._step, 2, list(range(len(outs))),
                                 torch.stack([finite_probe(t) for t in outs])))

    def _read_checks(self, values: list[float], entries: list[tuple[int, int, list[int], int]]) -> list[
            tuple[int, float | None]]:
        """Host side of the per-step checks: note the first NaN/Inf, return (step, total grad norm) pairs."""
        totals: list[tuple[int, float | None]] = []
        off = 0
        for step, kind, ids, n in entries:
            chunk = values[off:off + n]
            off += n
            if kind == 1:
                sq = sum(v * v for v in chunk)
                totals.append((step, _finite(math.sqrt(sq)) if math.isfinite(sq) else None))
                if not math.isfinite(sq) and self._scaler() is not None:
                    self._skipped.add(step)   # the GradScaler skips exactly these steps: not a divergence
                    continue
            if not self._nf_written and self.check_finite:
                bad = [i for i, v in zip(ids, chunk, strict=True) if not math.isfinite(v)]
                if bad:
                    self._note_nonfinite(step, kind, bad[0])
        return totals

    def _flush_checks(self) -> list[tuple[int, float | None]]:
        """Move the pending per-step checks to the host (one transfer) and act on them."""
        if not self._checks:
            return []
        values = torch.cat([v.reshape(-1).to(torch.float64) for *_, v in self._checks]).tolist()
        entries = [(s, k, ids, v.numel()) for s, k, ids, v in self._checks]
        self._checks = []
        return self._read_checks(values, entries)

    def _note_nonfinite(self, step: int, kind: int, where: int) -> None:
        if kind == 1:
            rec = NonFiniteRecord(step=step, where="gradient", layer=self._param_layer[where],
                                  param=self._param_names[where])
        elif kind == 0:
            rec = NonFiniteRecord(step=step, where="activation", layer=self._layers[where].name)
        else:
            rec = NonFiniteRecord(step=step, where="output")
        self._write_nonfinite(rec)

    def _write_nonfinite(self, rec: NonFiniteRecord) -> None:
        self._nf_written = True
        self._writer.write(rec.to_dict())
        place = f" in {rec.where}s of {rec.layer}" if rec.layer else f" in the {rec.where}"
        warnings.warn(f"gradscope: first NaN/Inf at step {rec.step}{place}; see `gradscope report "
                      f"{self.logdir}`", GradscopeWarning, stacklevel=3)

    # ----------------------------------------------------------------------------------------- records
    def _end_step(self) -> None:
        self._open = False
        if self._rec:
            self._record()
        self._acc, self._probes, self._snap, self._wnorm, self._input = {}, [], None, None, None

    def _record(self) -> None:
        """Assemble every statistic of this step into one vector, move it to the host ONCE, write a record."""
        pieces: list[torch.Tensor] = []
        layout: list[tuple[str, int, Any]] = []   # (what, length, extra)

        def put(name: str, t: torch.Tensor, extra: Any = None) -> None:
            t = t.detach().reshape(-1).to(device=dev, dtype=torch.float64)
            pieces.append(t)
            layout.append((name, t.numel(), extra))

        dev = self._device()
        with torch.no_grad():
            for i, acc in sorted(self._acc.items()):
                put("layer", self._layer_vector(i, acc, dev), i)
            if self._pgn is not None:
                idx, norms = self._pgn
                put("pgn", norms, idx)
            if self._pre is not None:
                put("pre", self._pre)
            if self._params and self._wnorm is not None and self._snap is not None:
                put("wnorm", torch.stack(self._wnorm))
                new = [self._sample(i, p) for i, p in enumerate(self._params)]
                put("dw", torch.stack(torch._foreach_norm(torch._foreach_sub(new, self._snap))))
                put("w0", torch.stack(torch._foreach_norm(self._snap)))
            if self._checks:
                put("checks", torch.cat([v.reshape(-1) for *_, v in self._checks]),
                    [(s, k, ids, v.numel()) for s, k, ids, v in self._checks])
            if self._input is not None:
                put("input", self._input)
            values = torch.cat(pieces).tolist() if pieces else []   # the one host transfer of the step
        self._write_record(values, layout)
        self._checks = []

    def _device(self) -> torch.device:
        for acc in self._acc.values():
            if acc.s is not None:
                return acc.s.device
        return self._params[0].device if self._params else torch.device("cpu")

    def _layer_vector(self, i: int, acc: LayerAcc, dev: torch.device) -> torch.Tensor:
        """[s, ss, lo, hi, nonzero, nonfinite, units, inactive, dead, saturated, dmean, gsq] for layer i."""
        nan = torch.tensor(float("nan"), device=dev)
        assert acc.unit_max is not None and acc.s is not None
        assert acc.ss is not None and acc.lo is not None and acc.hi is not None
        assert acc.nonzero is not None and acc.nonfinite is not None
        units = acc.unit_max.numel()
        active = acc.unit_max > 0
        inactive = (~active).sum()
        last = self._last_active.get(i)
        if last is None or last.numel() != units:
            last = torch.full((units,), -1, dtype=torch.int64, device=acc.unit_max.device)
        last = torch.where(active, self._rec_idx, last)
        self._last_active[i] = last
        # Before the window has filled there is not enough evidence to call a unit dead.
        enough = self._rec_idx + 1 >= self.dead_window
        dead = ((self._rec_idx - last) >= self.dead_window).sum() if enough else nan
        if acc.unit_dsum is not None and acc.unit_n:
            per_unit = acc.unit_dsum / acc.unit_n
            saturated = (per_unit < self.saturation_derivative).sum()
            dmean = per_unit.mean()
        else:
            saturated = dmean = nan
        vals = [acc.s, acc.ss, acc.lo, acc.hi, acc.nonzero, acc.nonfinite, torch.tensor(float(units), device=dev),
                inactive, dead, saturated, dmean, acc.gsq if acc.gsq is not None else nan]
        # One stack per layer; dtype conversion only where a value is not fp32 already (counts are int64).
        return torch.stack([v if v.dtype == torch.float32 else v.float() for v in vals])

    def _write_record(self, values: list[float], layout: list[tuple[str, int, Any]]) -> None:
        n_layers, n_params = len(self._layers), len(self._params)
        layer_rows: list[tuple[float | None, ...] | None] = [None] * n_layers
        pg: list[float | None] = [None] * n_params
        wn = dw = w0 = None
        hist: list[tuple[int, float | None]] = []
        inp = None
        pre: float | None = None
        off = 0
        for what, n, extra in layout:
            chunk = values[off:off + n]
            off += n
            if what == "layer":
                acc = self._acc[extra]
                layer_rows[extra] = _layer_row(chunk, acc.count, acc.calls)
            elif what == "pgn":
                for j, v in zip(extra, chunk, strict=True):
                    pg[j] = v
            elif what == "pre":
                pre = math.sqrt(sum(v * v for v in chunk))
            elif what == "wnorm":
                wn = chunk
            elif what == "dw":
                dw = chunk
            elif what == "w0":
                w0 = chunk
            elif what == "checks":
                hist = self._read_checks(chunk, extra)
            elif what == "input":
                inp = InputStats(count=int(chunk[0]), mean=_finite(chunk[1]), std=_finite(chunk[2]),
                                 min=_finite(chunk[3]), max=_finite(chunk[4]), feature_std_min=_finite(chunk[5]),
                                 feature_std_max=_finite(chunk[6]), feature_mean_absmax=_finite(chunk[7]))
        param_rows: list[tuple[float | None, ...] | None] = []
        for j in range(n_params):
            g = pg[j]
            norm = wn[j] if wn is not None else None
            ratio = (dw[j] / w0[j]) if (dw is not None and w0 is not None and w0[j] > 0) else None
            grad_bad = None if g is None else float(not math.isfinite(g))
            param_rows.append(None if g is None and norm is None else (_finite(g), _finite(norm), _finite(ratio),
                                                                      grad_bad))
        opt = self._optimizer_ref() if self._optimizer_ref is not None else None
        lr = tuple(float(g["lr"]) for g in opt.param_groups) if opt is not None else ()
        total = hist[-1][1] if hist and hist[-1][0] == self._step else None
        rec = StepRecord(step=self._step, time=time.perf_counter() - self._t0, layers=tuple(layer_rows),
                         params=tuple(param_rows), grad_norm=total, grad_norm_steps=tuple(hist), lr=lr, input=inp,
                         skipped=self._skip_now or self._step in self._skipped, clip_norm=_finite(pre))
        self._skipped.clear()
        self._writer.write(rec.to_dict())
        if self._tb is not None:
            self._tb.step(rec)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameters and gradients): statistics never trigger a collective."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms in fp32 (an fp16 norm overflows at 65504), one stacked tensor."""
    if all(g.dtype == torch.float32 for g in grads):
        return torch.stack(torch._foreach_norm(grads))
    return torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])


def _compile_region(module: nn.Module) -> bool:
    """The forward about to run is compiled: ``module`` is torch.compile's wrapper (its hooks run eagerly, the
    forward inside is compiled), or we are already inside a compiled call."""
    if getattr(module, "_orig_mod", None) is not None:
        return True
    try:
        from torch._C._dynamo.eval_frame import get_eval_frame_callback

        cb = get_eval_frame_callback()
        return cb is not None and cb is not False
    except Exception:  # pragma: no cover - older/newer torch without this function
        return False


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _layer_row(chunk: list[float], count: int, calls: int) -> tuple[float | None, ...]:
    s, ss, lo, hi, nonzero, nonfinite, units, inactive, dead, saturated, dmean, gsq = chunk
    n = max(count, 1)
    mean = s / n
    var = max(ss / n - mean * mean, 0.0) if math.isfinite(ss) and math.isfinite(mean) else float("nan")
    absmax = max(abs(lo), abs(hi))
    return (count, _finite(mean), _finite(var), _finite(absmax), 1.0 - nonzero / n, int(nonfinite), int(units),
            int(inactive), None if math.isnan(dead) else int(dead),
            None if math.isnan(saturated) else int(saturated), _finite(dmean),
            None if math.isnan(gsq) else _finite(math.sqrt(gsq)) if gsq >= 0 else None, calls)


watch = Watch
"""``gradscope.watch(model, logdir, **options)``: the one-line attach. An alias of :class:`Watch`, so that the
options are declared (and documented) once."""
