"""Finding → fixes. Each rule's fixes live next to it in ``rules/<family>.py`` and are registered with it
(``RULES[code].fixes``); the helpers several families share are in ``rules/_fixes.py``. This module keeps the
one call that dispatches on a finding's code, for callers that hold a finding and a run.

Each fix names the user's layers (``model.fc2``, ``model.encoder[0]``) and carries values derived from the run:
the clipping norm from the observed total gradient norms, the early-stopping point from the validation loss,
a learning rate scaled from the observed update/weight ratio. Snippets assume ``import torch``,
``from torch import nn``, the model bound to ``model`` and the optimizer to ``optimizer``.
"""

from __future__ import annotations

from gradscope.judge.findings import Finding, Fix
from gradscope.judge.rules import RULES
from gradscope.judge.rules._common import module_path
from gradscope.judge.rules._fixes import suggest_max_norm
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run


def fixes_for(finding: Finding, run: Run, thresholds: Thresholds | None = None) -> tuple[Fix, ...]:
    """The fixes for one finding, most direct first, naming the run's layers and values."""
    th = thresholds or Thresholds()
    rule = RULES.get(finding.code)
    if rule is None:
        return ()
    return tuple(fx for fx in rule.fixes(finding, run, th) if fx is not None)


__all__ = ["fixes_for", "module_path", "suggest_max_norm"]
