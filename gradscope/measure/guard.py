"""The one guard around everything gradscope runs inside the user's training process.

Every hook body, every recorded-step routine, the log writes and the TensorBoard mirror calls run under
``Guard``. When one of them raises, the guard turns off the part it belongs to (``Part``) for the rest of the
run — or, when the failure is in the step control itself or the log, the whole watch — writes a ``problem``
record to the log and warns ONCE with a ``GradscopeWarning``. The exception never reaches the training loop,
and since gradscope only reads what the model computes, training goes on bit-identical.

The ``problem`` record is one JSON line::

    {"kind": "problem", "step": 12, "where": "layers", "error": "RuntimeError: CUDA error: ..."}

``step``: the training step it happened in (null before the first); ``where``: the ``Part`` that was turned off
(its value, a stable string); ``error``: the exception's type and first line. Readers that do not know the
kind skip it (``store.jsonl.read_log`` skips unknown kinds quietly).

What the guard does not catch: errors of the user's own input (``log(step=-1)``, an unwritable logdir at
attach), which are raised as documented; ``KeyboardInterrupt`` and other ``BaseException``s; a
``GradscopeWarning`` the user turned into an error with ``-W error`` (their choice, raised after the part is
off and the record is written).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from gradscope.errors import GradscopeWarning

T = TypeVar("T")


class Part(str, Enum):
    """What an internal failure turns off. The value is what the ``problem`` record's ``where`` says."""

    WATCH = "watch"              # step control, attach/close: everything
    LOG = "log"                  # the JSONL writer: without it nothing is kept, so everything
    LAYERS = "layers"            # per-layer activation and output-gradient statistics
    ACTIVATIONS = "activations"  # learning which activation follows each layer (first forward pass)
    INPUT = "input"              # statistics of the model input
    OUTPUT = "output"            # whether the model output is probabilities (min, row sums)
    GRADIENTS = "gradients"      # parameter gradient norms, total gradient norm, GradScaler tracking
    CLIPPING = "clipping"        # gradient norms at optimizer-step time
    UPDATES = "updates"          # weight norms and update-to-weight ratios
    FINITE = "finite"            # the every-step NaN/Inf checks
    TENSORBOARD = "tensorboard"  # the TensorBoard mirror

    @property
    def everything(self) -> bool:
        return self in (Part.WATCH, Part.LOG)


_WHAT = {
    Part.WATCH: "gradscope's step control", Part.LOG: "the gradscope log", Part.LAYERS: "layer statistics",
    Part.ACTIVATIONS: "activation detection", Part.INPUT: "input statistics",
    Part.OUTPUT: "output statistics", Part.GRADIENTS: "gradient norms",
    Part.CLIPPING: "clipping detection", Part.UPDATES: "update ratios", Part.FINITE: "NaN/Inf checks",
    Part.TENSORBOARD: "the TensorBoard mirror",
}


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``, at most 300 characters, safe to print and to encode as UTF-8
    (a lone surrogate in a module name must not make the report of the failure fail too)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text[:300].encode("utf-8", "backslashreplace").decode("utf-8")


def problem_record(step: int, part: Part, exc: BaseException) -> dict[str, Any]:
    """The log record of one internal failure (the shape is documented in this module's docstring); ``step``
    is null before the first step."""
    return {"kind": "problem", "step": int(step) if step >= 0 else None, "where": part.value,
            "error": describe(exc)}


class Guard:
    """Runs gradscope's code so that it can fail without failing the user's training.

    ``write``: how a problem record reaches the log (the guard never raises from it). ``step``: the current
    step, for the record. ``on_everything_off``: called once when a failure turns the whole watch off (the
    hooks return at once from then on, and are removed at close). ``where``: named in the warning (the log path).
    """

    def __init__(self, write: Callable[[dict[str, Any]], None], step: Callable[[], int],
                 on_everything_off: Callable[[], None], where: str) -> None:
        self._write = write
        self._step = step
        self._on_everything_off = on_everything_off
        self._where = where
        self.off: set[Part] = set()
        self.everything_off = False

    def on(self, part: Part) -> bool:
        """Whether ``part`` still runs (cheap: called in hooks on every step)."""
        return not self.everything_off and part not in self.off

    def run(self, part: Part, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)``, or None when ``part`` is off or ``fn`` raises (which turns ``part`` off)."""
        if self.everything_off or part in self.off:
            return None
        try:
            return fn(*args, **kwargs)
        except Warning:
            raise   # a warning the user made an error (-W error): theirs to see, not an internal failure
        except Exception as e:
            self.fail(part, e)
            return None

    def fail(self, part: Part, exc: BaseException) -> None:
        """Turn ``part`` off after ``exc``: a problem record, one warning, and for the step control or the
        log, the whole watch."""
        if part in self.off or self.everything_off:
            return
        self.off.add(part)
        try:
            step = int(self._step())
        except Exception:
            step = -1
        if part is not Part.LOG:
            try:
                self._write(problem_record(step, part, exc))
            except Exception as e:   # the log itself fails too: nothing is kept from here on
                self.off.add(Part.LOG)
                part = Part.LOG
                exc = e
        if part.everything:
            self.everything_off = True
            with contextlib.suppress(Exception):   # removing hooks cannot fail in a way the user could act on
                self._on_everything_off()
        what = _WHAT[part]
        off = "gradscope" if part.everything else what
        warnings.warn(f"gradscope: internal error in {what} at step {step} ({describe(exc)}); {off} turned off "
                      f"for the rest of this run, training continues unchanged. Please report it with the log "
                      f"{self._where}", GradscopeWarning, stacklevel=2)
