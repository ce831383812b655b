"""The step clock: where a training step begins and ends, and every hook gradscope puts on the model.

A training step is the work between two training-mode forward passes of the root module (``model.training``
and grad enabled), or, with ``optimizer=``, between two optimizer steps (so gradient accumulation counts as
one step). Forward passes under ``torch.no_grad()`` never count. A forward pass in ``eval()`` mode with grad
enabled counts only when a backward follows (a loop that trains in eval mode by mistake): its backward opens
the step, as for a compiled forward, and the step is noted in ``LoopFacts.eval_steps``; its per-layer
statistics are not taken (the forward ran before it was known to be a training one). Validation passes in
eval mode without backward change nothing. One step through the hooks, in order:

1. root forward pre-hook → ``begin_forward``: ends the previous step (without ``optimizer=``, or when a
   GradScaler skipped its optimizer step), begins this one, and lets the watch take the input statistics.
2. each watched layer's forward hook: the watch reads the layer's output (recorded steps; on other steps it
   only notes the output for the end-of-forward NaN/Inf check).
3. root forward hook → ``end_forward``: the watch checks the outputs; a tensor hook on each output that
   requires grad queues ``_end_of_backward`` with the autograd engine when backward reaches it.
4. layer output-gradient hooks (recorded steps): the norm of dL/d output of each layer.
5. end of backward (after DDP/FSDP have reduced the gradients, see ``defer``): the parameter gradient norms.
6. optimizer pre-/post-step hooks (``optimizer=``): the norms the optimizer uses (clipping), then the end of
   the step, which writes its record when it is recorded.

Frameworks that do not call the root module's ``forward`` (Lightning runs ``training_step``) call
``begin_forward`` and ``end_forward`` themselves: that is the public API of this module.

No reference cycle: the hooks hold this clock, and the clock holds the watch only weakly, so a model keeps
neither the watch nor what the watch holds (its layers, parameters, log) alive. Every hook body runs under
the watch's ``Guard``: a failure in the step control turns gradscope off and never reaches the training loop.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradscope.measure.guard import Guard, Part
from gradscope.measure.layers import all_tensors

if TYPE_CHECKING:
    from gradscope.measure.watch import Watch


@dataclass
class LoopFacts:
    """How the training loop itself behaved since the last record (issue 12's evidence), kept on the host:
    counting them costs no tensor op."""

    from_step: int = 0                  # first step these facts cover
    forwards: int = 0                   # forward passes counted as (part of) a step
    eval_forwards: int = 0              # of those, passes in eval mode that led to a backward
    eval_steps: list[int] = field(default_factory=list)         # steps with such an eval-mode pass
    grad_checks: int = 0                # backwards that came first after an optimizer step (checked)
    stale_grad_steps: list[int] = field(default_factory=list)   # ... and found ``.grad`` not zeroed
    train_nograd_forwards: int = 0      # root forwards in train mode with grad disabled (validation in train mode)
    train_nograd_repeats: int = 0       # ... of them on the very input tensor of the one before (MC sampling)
    last_nograd: Any = None             # (weak reference to that input, (from_step, forwards) at that pass)

    def reset(self, from_step: int) -> None:
        self.from_step, self.forwards, self.eval_forwards, self.grad_checks = from_step, 0, 0, 0
        self.eval_steps, self.stale_grad_steps = [], []
        self.train_nograd_forwards, self.train_nograd_repeats = 0, 0

    def note_nograd_forward(self, args: tuple[Any, ...]) -> None:
        """A root forward in train mode under ``no_grad``/``inference_mode``: counted, and whether its first
        input is the very tensor the previous such forward got with no training forward in between (Monte Carlo
        dropout samples one batch many times; a validation loop feeds a new batch each time, and one that
        validates on the same tensor every epoch trains in between). Host-only: an identity test on a weak
        reference and a comparison of counters, nothing on a training step."""
        self.train_nograd_forwards += 1
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        at = (self.from_step, self.forwards)
        last = self.last_nograd
        if x is not None and last is not None and last[1] == at and last[0]() is x:
            self.train_nograd_repeats += 1
        self.last_nograd = (weakref.ref(x), at) if x is not None else None


class Hook:
    """A hook gradscope puts on the user's model or optimizer: it forwards to one method of the clock.

    Why an object and not the bound method: ``copy.deepcopy(model)`` (an EMA copy, the best checkpoint kept in
    memory) and ``torch.save(model)`` copy a module's hooks too. A bound method would drag the clock, the watch
    and its open log file along and fail (``cannot pickle '_io.TextIOWrapper'``). A ``Hook`` copies (and
    pickles) as an inert one: the copy is not watched — attach a new watch to it — and the original keeps
    its own. A pickled model then needs gradscope importable to load, as it needs the model's own classes.
    """

    __slots__ = ("clock", "extra", "name")

    def __init__(self, clock: StepClock | None, name: str, *extra: int) -> None:
        self.clock, self.name, self.extra = clock, name, extra

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        clock = self.clock
        if clock is None:
            return None
        return getattr(clock, self.name)(*self.extra, *args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Hook:
        return Hook(None, self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hook, (None, self.name))


class StepClock:
    """Counts training steps and decides which are recorded (the first ``warmup``, then every ``every``-th).

    ``step``: index of the open (or last) step, -1 before the first; ``open``: a step has begun and not
    ended; ``recording``: the open (or last) step is recorded; ``record_index``: 0, 1, 2, ... over recorded
    steps; ``in_forward``: inside a counted forward pass (layer hooks act only then).
    """

    def __init__(self, watch: Watch, guard: Guard, *, every: int, warmup: int, by_optimizer: bool,
                 defer: bool) -> None:
        self._watch = weakref.ref(watch)
        self._guard = guard
        self.every, self.warmup = every, warmup
        self.by_optimizer = by_optimizer
        self.defer = defer   # distributed: read gradients after DDP/FSDP have reduced them
        self.step = -1
        self.open = False
        self.recording = False
        self.record_index = -1
        self.in_forward = False
        self.backward_seen = False   # a backward has ended in the open step
        self._backward_queued = False
        self._late = False
        self._after_optimizer_step = False   # the next backward is the first after an optimizer step
        self._handles: list[RemovableHandle] = []
        self.loop = LoopFacts()

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def watch(self) -> Watch | None:
        """The watch this clock serves, while it is alive."""
        return self._watch()

    def attach(self, model: nn.Module, layers: Sequence[tuple[int, nn.Module]],
               optimizer: torch.optim.Optimizer | None) -> None:
        h = self._handles
        h.append(model.register_forward_pre_hook(Hook(self, "begin_forward")))
        h.append(model.register_forward_hook(Hook(self, "_forward_hook"), always_call=True))
        for index, module in layers:
            h.append(module.register_forward_hook(Hook(self, "_layer_output", index)))
        if optimizer is not None:
            h.append(optimizer.register_step_pre_hook(Hook(self, "_optimizer_pre")))
            h.append(optimizer.register_step_post_hook(Hook(self, "_optimizer_post")))

    def detach(self) -> None:
        """Remove every hook (safe twice, safe from inside a hook)."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        self.in_forward = False

    def is_recorded(self, step: int) -> bool:
        return step < self.warmup or step % self.every == 0

    def finish(self) -> None:
        """At close: end the open step when it is a whole one (without ``optimizer=``: any; with it: one whose
        backward ran but whose optimizer step did not come)."""
        w = self._watch()
        if w is not None and self.open and (not self.by_optimizer or self.backward_seen):
            self._end_step(w)

    # --------------------------------------------------------------------------------- the public API
    def begin_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """A forward pass of the root module begins (its forward pre-hook; frameworks call it at the start of
        their training step). Counted when ``module`` is in training mode and grad is enabled."""
        if torch.compiler.is_compiling():
            return   # traced by torch.compile (a torch.nn container as root): no Python state in a graph
        self._guard.run(Part.WATCH, self._begin_forward, module, args)

    def end_forward(self, module: nn.Module, output: Any) -> None:
        """The forward pass of the root module ended with ``output`` (its forward hook; frameworks call it
        with the loss before backward)."""
        if torch.compiler.is_compiling():
            # Traced into a torch.compile graph (a model compiled after watch()): no Python state in here. A hook
            # on the outputs runs eagerly in backward and opens the step there (_compiled_step).
            w = self._watch()
            if w is not None and w._params and module.training and torch.is_grad_enabled():
                for t in all_tensors(output):
                    if t.is_floating_point() and t.requires_grad:
                        t.register_hook(self._compiled_step)
            return
        self._guard.run(Part.WATCH, self._end_forward, module, output)

    # ------------------------------------------------------------------------------------------- steps
    def _begin_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.in_forward or not (module.training and torch.is_grad_enabled()):
            if not self.in_forward and module.training:
                self.loop.note_nograd_forward(args)   # a forward in train mode with grad off: not a step
            return
        w = self._watch()
        if w is None:
            return
        if self.open and (not self.by_optimizer or w._scaler.step_was_skipped()):
            self._end_step(w)
        if not self.open:
            self._begin_step(w)
        self.in_forward = True
        self.loop.forwards += 1
        w._forward_begins(module, args)

    def _end_forward(self, module: nn.Module, output: Any) -> None:
        if not self.in_forward:
            if not module.training and torch.is_grad_enabled():
                # An eval-mode pass with grad: a step only if a backward follows (_eval_step).
                w = self._watch()
                if w is not None and w._params:
                    for t in all_tensors(output):
                        if t.is_floating_point() and t.requires_grad:
                            t.register_hook(self._eval_step)
            return
        self.in_forward = False
        w = self._watch()
        if w is None:
            return
        outs = [t for t in all_tensors(output) if t.is_floating_point()]
        w._forward_ends(module, outs)
        if w._params:
            for t in outs:
                if t.requires_grad:
                    t.register_hook(self._output_grad)

    def _forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.end_forward(module, output)

    def _begin_step(self, w: Watch) -> None:
        self.step += 1
        self.open = True
        self.recording = self.is_recorded(self.step)
        if self.recording:
            self.record_index += 1
        self.backward_seen = False
        w._step_begins()

    def _end_step(self, w: Watch) -> None:
        self.open = False
        w._step_ends()

    # ------------------------------------------------------------------------------------------ layers
    def _layer_output(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        """The forward hook of watched layer ``index``."""
        if torch.compiler.is_compiling() or not self.in_forward:
            return   # inside a torch.compile graph layer hooks do nothing (docs/setups.md)
        w = self._watch()
        if w is not None:
            self._guard.run(Part.WATCH, w._layer_output, index, output)

    def layer_grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        """A tensor hook for one layer output of the open recorded step: hands dL/d output to the watch."""
        step = self.step

        def hook(g: torch.Tensor) -> None:
            w = self._watch()
            if w is not None and step == self.step and self.open:
                self._guard.run(Part.LAYERS, w._layer_stats.add_grad, index, g)

        return hook

    # ---------------------------------------------------------------------------------------- backward
    def _compiled_step(self, g: torch.Tensor) -> None:
        """First output gradient of a backward whose forward ran inside a compiled graph (the root's hooks were
        traced, so no step was opened in forward): a step is one backward, or one optimizer step."""
        self._guard.run(Part.WATCH, self._step_from_backward, False)

    def _eval_step(self, g: torch.Tensor) -> None:
        """First output gradient of a backward through an eval-mode forward pass: it was a training one."""
        self._guard.run(Part.WATCH, self._step_from_backward, True)

    def _step_from_backward(self, eval_mode: bool) -> None:
        w = self._watch()
        if w is None or not self.attached or self._backward_queued:
            return
        # Without optimizer=, a step is one backward: a second one begins the next step (a backward that
        # completes a step whose forward already opened it does not). With it, the optimizer step ends a step
        # (or the GradScaler skipping it).
        if self.open and (w._scaler.step_was_skipped() if self.by_optimizer else self.backward_seen):
            self._end_step(w)
        if not self.open:
            self._begin_step(w)
        self.loop.forwards += 1
        if eval_mode:
            self.loop.eval_forwards += 1
            if not self.loop.eval_steps or self.loop.eval_steps[-1] != self.step:
                self.loop.eval_steps.append(self.step)
        self._queue_end_of_backward()

    def _output_grad(self, g: torch.Tensor) -> None:
        self._guard.run(Part.WATCH, self._queue_end_of_backward)

    def _queue_end_of_backward(self) -> None:
        """At the first output gradient of a backward (before any parameter gradient of the model is
        accumulated): queue the end-of-backward callback, and after an optimizer step check ``.grad``."""
        if not self._backward_queued and self.open:
            self._backward_queued = True
            if self._after_optimizer_step:
                self._after_optimizer_step = False
                w = self._watch()
                if w is not None:
                    w._check_stale_grads()
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        """Runs once when the whole backward pass is done: gradients are accumulated, not yet clipped."""
        self._guard.run(Part.WATCH, self._end_of_backward_body)

    def _end_of_backward_body(self) -> None:
        self._backward_queued = False
        if not self.open:
            return
        if self.defer and not self._late:
            # DDP and FSDP reduce gradients in end-of-backward callbacks of their own, queued during this
            # backward, so here the gradients are still local; a callback queued now runs after theirs.
            self._late = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            return
        self._late = False
        self.backward_seen = True
        w = self._watch()
        if w is not None:
            w._backward_ends()

    # --------------------------------------------------------------------------------------- optimizer
    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        w = self._watch()
        if w is not None and self.open and self.recording:
            self._guard.run(Part.CLIPPING, w._optimizer_step_begins, args, kwargs)

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._guard.run(Part.WATCH, self._optimizer_post_body)

    def _optimizer_post_body(self) -> None:
        w = self._watch()
        if w is None or not self.open:
            return
        if self.recording:
            self._guard.run(Part.CLIPPING, w._optimizer_step_ended)
        self._end_step(w)
        self._after_optimizer_step = True
        w._mark_grads()
