"""The rules: one function per finding code, grouped by family, registered in ``RULES``.

Every rule has the signature ``rule(run, thresholds, context) -> list[Finding] | NotEvaluated``, takes only
plain numbers (no torch), uses no number that is not a ``Thresholds`` field, and documents itself in its
docstring (symptom, detected when, why it matters, fixes) — ``RULES[code].doc`` is what docs/ are built from.
Rules return findings without fixes; ``gradscope.judge.fixes`` adds them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from gradscope.judge.findings import Code
from gradscope.judge.rules._common import Context, RuleFunc, RuleResult
from gradscope.judge.rules.activations import dead_relu, saturation
from gradscope.judge.rules.data import unnormalized_input
from gradscope.judge.rules.fitting import BiasVariance, Verdict, bias_variance, overfitting, underfitting
from gradscope.judge.rules.gradients import exploding_gradients, vanishing_gradients
from gradscope.judge.rules.init import poor_init
from gradscope.judge.rules.loss import divergence, unstable_loss
from gradscope.judge.rules.optim import learning_rate


@dataclass(frozen=True)
class Rule:
    code: Code
    func: RuleFunc
    family: str

    @property
    def name(self) -> str:
        return self.code.value

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


# Order matters: poor_init runs last because it reads what the gradient and activation rules found.
RULES: dict[Code, Rule] = {r.code: r for r in (
    Rule(Code.DIVERGENCE, divergence, "loss"),
    Rule(Code.EXPLODING_GRADIENTS, exploding_gradients, "gradients"),
    Rule(Code.VANISHING_GRADIENTS, vanishing_gradients, "gradients"),
    Rule(Code.DEAD_RELU, dead_relu, "activations"),
    Rule(Code.SATURATION, saturation, "activations"),
    Rule(Code.UNNORMALIZED_INPUT, unnormalized_input, "data"),
    Rule(Code.LEARNING_RATE, learning_rate, "optimizer"),
    Rule(Code.UNSTABLE_LOSS, unstable_loss, "loss"),
    Rule(Code.OVERFITTING, overfitting, "fitting"),
    Rule(Code.UNDERFITTING, underfitting, "fitting"),
    Rule(Code.POOR_INIT, poor_init, "init"),
)}
"""Finding code → rule (function, family, docstring). Every ``Code`` has exactly one rule."""

__all__ = ["RULES", "BiasVariance", "Context", "Rule", "RuleFunc", "RuleResult", "Verdict", "bias_variance",
           "dead_relu", "divergence", "exploding_gradients", "learning_rate", "overfitting", "poor_init",
           "saturation", "underfitting", "unnormalized_input", "unstable_loss", "vanishing_gradients"]
