"""gradscope: attach to a PyTorch model in one line, find what is wrong with its training, say how to fix it.

    scope = gradscope.watch(model, logdir="runs/x")
    ...  # your training loop, unchanged
    scope.close()
    # then: gradscope report runs/x

The pipeline is the tree: ``measure/`` (the write side, torch) → ``store/`` (the log) → ``judge/`` (rules,
findings, fixes) → ``show/`` (report, CLI). See docs/architecture.md.

Every public name is imported lazily: ``import gradscope; gradscope.watch(model)`` loads only the write side
(no rules, no rich), and ``gradscope report`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradscope._version import __version__

if TYPE_CHECKING:
    from gradscope.errors import GradscopeError, GradscopeWarning, LogError
    from gradscope.judge.diagnose import Diagnosis, diagnose
    from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
    from gradscope.judge.thresholds import Thresholds
    from gradscope.measure.watch import Watch, watch
    from gradscope.show.report import Report, report
    from gradscope.store.load import load
    from gradscope.store.run import Run

_LAZY = {
    "Code": "gradscope.judge.findings",
    "Diagnosis": "gradscope.judge.diagnose",
    "Finding": "gradscope.judge.findings",
    "Fix": "gradscope.judge.findings",
    "FixKind": "gradscope.judge.findings",
    "GradscopeError": "gradscope.errors",
    "GradscopeWarning": "gradscope.errors",
    "LogError": "gradscope.errors",
    "NotEvaluated": "gradscope.judge.findings",
    "Report": "gradscope.show.report",
    "Run": "gradscope.store.run",
    "Severity": "gradscope.judge.findings",
    "Thresholds": "gradscope.judge.thresholds",
    "Watch": "gradscope.measure.watch",
    "diagnose": "gradscope.judge.diagnose",
    "load": "gradscope.store.load",
    "report": "gradscope.show.report",
    "watch": "gradscope.measure.watch",
}
"""Public name → the module that defines it."""

__all__ = [
    "Code",
    "Diagnosis",
    "Finding",
    "Fix",
    "FixKind",
    "GradscopeError",
    "GradscopeWarning",
    "LogError",
    "NotEvaluated",
    "Report",
    "Run",
    "Severity",
    "Thresholds",
    "Watch",
    "__version__",
    "diagnose",
    "load",
    "report",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        obj = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = obj   # later lookups skip __getattr__
        return obj
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
