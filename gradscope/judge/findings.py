"""Findings and fixes: what the rules conclude, as small frozen records. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class FixKind(str, Enum):
    """The kinds of fix, exactly these strings (they are part of the JSON contract)."""

    INIT = "init"
    ACTIVATION = "activation"
    BATCHNORM = "batchnorm"            # normalization layers: BatchNorm, LayerNorm
    RESIDUAL = "residual"
    CLIPPING = "clipping"
    LEARNING_RATE = "learning_rate"
    REGULARIZATION = "regularization"  # weight decay, L1, dropout
    EARLY_STOPPING = "early_stopping"
    DATA = "data"                      # more data, augmentation
    CAPACITY = "capacity"              # bigger / deeper model
    TRAIN_LONGER = "train_longer"
    NORMALIZATION = "normalization"    # standardize the inputs
    TRAINING_LOOP = "training_loop"    # the loop itself: optimizer construction, detach, zero_grad, modes


class Code(str, Enum):
    """Stable finding codes. A code never changes meaning once released; new ones are only added."""

    VANISHING_GRADIENTS = "vanishing_gradients"
    EXPLODING_GRADIENTS = "exploding_gradients"
    DEAD_RELU = "dead_relu"
    SATURATION = "saturation"
    DIVERGENCE = "divergence"
    OVERFITTING = "overfitting"
    UNDERFITTING = "underfitting"
    POOR_INIT = "poor_init"
    UNNORMALIZED_INPUT = "unnormalized_input"
    UNSTABLE_LOSS = "unstable_loss"
    LEARNING_RATE = "learning_rate"
    PARAM_NOT_UPDATED = "param_not_updated"
    NO_GRADIENT = "no_gradient"
    LR_PLATEAU = "lr_plateau"
    GRAD_NOT_ZEROED = "grad_not_zeroed"
    EVAL_MODE_TRAINING = "eval_mode_training"
    TRAIN_MODE_EVAL = "train_mode_eval"
    PROBABILITIES_AS_LOGITS = "probabilities_as_logits"


@dataclass(frozen=True)
class Fix:
    kind: FixKind
    summary: str        # one line
    code: str = ""      # a snippet for this model, ready to paste

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "summary": self.summary, "code": self.code}


@dataclass(frozen=True)
class Finding:
    code: Code
    severity: Severity
    title: str
    message: str                       # carries the numbers and the threshold
    layers: tuple[str, ...] = ()
    steps: tuple[int, int] | None = None    # first and last step of the evidence
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 1.0            # 0..1
    fixes: tuple[Fix, ...] = ()
    caused_by: tuple[Code, ...] = ()   # findings of these codes explain this one (see judge/causes.py)
    consequences: tuple[Code, ...] = ()   # findings of these codes are explained by this one
    detail: Any = field(default=None, compare=False, repr=False)
    """Typed values the rule hands to its fixes (a small frozen dataclass of the rule's own, e.g. the first
    bad step); ``evidence`` is the JSON view for people and tools and is not read back. Not serialized; fixes
    must work when it is None (a finding built by hand)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code.value, "severity": self.severity.value, "title": self.title,
            "message": self.message, "layers": list(self.layers),
            "steps": None if self.steps is None else list(self.steps),
            "evidence": self.evidence, "confidence": round(float(self.confidence), 3),
            "fixes": [f.to_dict() for f in self.fixes],
            # Optional keys (absent when empty, so older readers and outputs are unchanged).
            **({"caused_by": [c.value for c in self.caused_by]} if self.caused_by else {}),
            **({"consequences": [c.value for c in self.consequences]} if self.consequences else {}),
        }

    @property
    def is_root(self) -> bool:
        """No other finding of the run explains this one: it is a root cause (or stands alone)."""
        return not self.caused_by


@dataclass(frozen=True)
class NotEvaluated:
    """A rule that could not run on this run, and why (no validation loss → no overfitting verdict)."""

    code: Code
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "reason": self.reason}


def root_first_key(f: Finding) -> tuple[int, int, float, str]:
    """Root causes first, then the findings they explain; within each, most severe first, then by first step,
    then by code. The order ``diagnose`` returns findings in, for renderers that lead with root causes."""
    return (0 if f.is_root else 1, -f.severity.rank, float(f.steps[0]) if f.steps else float("inf"),
            f.code.value)
