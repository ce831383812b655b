"""The rules: one registry entry per finding code, each family's rules and fixes in ``rules/<family>.py``.

A family module defines its rule functions ``rule(run, thresholds, context) -> list[Finding] | NotEvaluated``,
their fixes ``fixes(finding, run, thresholds) -> list[Fix | None]``, and a ``RULES`` tuple of ``Rule`` entries
that ties each code to both and to what it ``needs`` from the run. Rules take only plain numbers (no torch),
use no number that is not a ``Thresholds`` field, and document themselves in their docstring (symptom, detected
when, why it matters, fixes) — ``RULES[code].doc`` is what docs/ are built from.

The names exported here (``dead_relu``, ...) are the registry entries: calling one checks the rule's needs
first ("not evaluated" when one is missing), then runs it.
"""

from __future__ import annotations

from gradscope.judge.findings import Code
from gradscope.judge.rules import activations, data, fitting, gradients, init, loop, loss, optim
from gradscope.judge.rules._common import Context, FixFunc, Need, Rule, RuleFunc, RuleResult
from gradscope.judge.rules.fitting import BiasVariance, Verdict, bias_variance

# Order matters: learning_rate reads the vanishing findings (starved layers are not the learning rate's
# doing). The rest is the order of the docs; no other rule reads another's findings.
_ORDER = (Code.DIVERGENCE, Code.EXPLODING_GRADIENTS, Code.VANISHING_GRADIENTS, Code.DEAD_RELU, Code.SATURATION,
          Code.UNNORMALIZED_INPUT, Code.LEARNING_RATE, Code.UNSTABLE_LOSS, Code.OVERFITTING, Code.UNDERFITTING,
          Code.POOR_INIT, Code.PARAM_NOT_UPDATED, Code.NO_GRADIENT, Code.LR_PLATEAU, Code.GRAD_NOT_ZEROED,
          Code.EVAL_MODE_TRAINING, Code.TRAIN_MODE_EVAL, Code.PROBABILITIES_AS_LOGITS)


def _registry() -> dict[Code, Rule]:
    families = (activations, data, fitting, gradients, init, loop, loss, optim)
    entries = [r for family in families for r in family.RULES]
    by_code: dict[Code, Rule] = {}
    for r in entries:
        if r.code in by_code:
            raise RuntimeError(f"two rules registered for {r.code.value}")   # a programming error, at import
        by_code[r.code] = r
    if set(by_code) != set(Code) or set(_ORDER) != set(Code):
        raise RuntimeError(f"rules and codes differ: {sorted(c.value for c in set(Code) ^ set(by_code))}")
    return {c: by_code[c] for c in _ORDER}


RULES: dict[Code, Rule] = _registry()
"""Finding code → rule (function, fixes, family, needs, docstring), in the order ``diagnose`` runs them.
Every ``Code`` has exactly one rule."""

divergence = RULES[Code.DIVERGENCE]
exploding_gradients = RULES[Code.EXPLODING_GRADIENTS]
vanishing_gradients = RULES[Code.VANISHING_GRADIENTS]
dead_relu = RULES[Code.DEAD_RELU]
saturation = RULES[Code.SATURATION]
unnormalized_input = RULES[Code.UNNORMALIZED_INPUT]
learning_rate = RULES[Code.LEARNING_RATE]
unstable_loss = RULES[Code.UNSTABLE_LOSS]
overfitting = RULES[Code.OVERFITTING]
underfitting = RULES[Code.UNDERFITTING]
poor_init = RULES[Code.POOR_INIT]
param_not_updated = RULES[Code.PARAM_NOT_UPDATED]
no_gradient = RULES[Code.NO_GRADIENT]
lr_plateau = RULES[Code.LR_PLATEAU]
grad_not_zeroed = RULES[Code.GRAD_NOT_ZEROED]
eval_mode_training = RULES[Code.EVAL_MODE_TRAINING]
train_mode_eval = RULES[Code.TRAIN_MODE_EVAL]
probabilities_as_logits = RULES[Code.PROBABILITIES_AS_LOGITS]

__all__ = ["RULES", "BiasVariance", "Context", "FixFunc", "Need", "Rule", "RuleFunc", "RuleResult", "Verdict",
           "bias_variance", "dead_relu", "divergence", "eval_mode_training", "exploding_gradients",
           "grad_not_zeroed", "learning_rate", "lr_plateau",
           "no_gradient", "overfitting", "param_not_updated", "poor_init", "probabilities_as_logits", "saturation",
           "train_mode_eval",
           "underfitting",
           "unnormalized_input", "unstable_loss", "vanishing_gradients"]
