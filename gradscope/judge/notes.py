"""What the report adds to a diagnosis from the run itself: which layers' dead units count, and the
clipping note. Judgement, so it lives with the judge (no torch, no rich); ``gradscope.show`` only displays
what these functions return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gradscope.store.schema import DYING_ACTIVATIONS, LayerInfo

if TYPE_CHECKING:
    from gradscope.judge.diagnose import Diagnosis

DYING_MODULE_TYPES = frozenset({"ReLU", "ReLU6"})
"""Module types whose own output units can die (a bare ``nn.ReLU`` watched as a layer of its own)."""

CLIPPING_NOTE = ("gradient clipping is active: the optimizer stepped with a smaller gradient norm than backward "
                 "produced; the gradient norms reported here are the pre-clip ones")
"""Said once per run whose log shows a clip that bound (``Run.clipping``): without it, a reader would take
the recorded (pre-clip) gradient norms for the ones the optimizer used."""


def counts_dead_units(act: str | None, layer_type: str | None) -> bool:
    """Whether a layer's "dead" count means dead units: only before (or of) a ReLU. A negative sigmoid or
    tanh input still passes a gradient, so calling it dead would be wrong."""
    return act in DYING_ACTIVATIONS or layer_type in DYING_MODULE_TYPES


def dying_layers(layers: Sequence[LayerInfo]) -> list[bool]:
    """``counts_dead_units`` for each layer, in order (the mask the layer table applies to its dead %)."""
    return [counts_dead_units(la.act, la.type) for la in layers]


def report_notes(d: Diagnosis) -> tuple[str, ...]:
    """The diagnosis' own notes, then the clipping note when the run clipped and the notes do not say so."""
    extra = (CLIPPING_NOTE,) if d.run.clipping and CLIPPING_NOTE not in d.notes else ()
    return tuple(d.notes) + extra
