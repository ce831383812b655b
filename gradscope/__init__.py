"""gradscope: attach to a PyTorch model in one line, find what is wrong with its training, say how to fix it.

    scope = gradscope.watch(model, logdir="runs/x")
    ...  # your training loop, unchanged
    scope.close()
    # then: gradscope report runs/x

The write side (``watch``) needs torch; the read side (``load``, ``diagnose``, ``report``) does not, so
reports work wherever the log is copied. Public names are imported lazily for that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Eager, not lazy: a submodule (``gradscope.report``, ``gradscope.diagnose``) would otherwise shadow the
# function of the same name as soon as anything imports it. All torch-free; only ``watch`` needs torch.
from gradscope.diagnose import Diagnosis, diagnose
from gradscope.errors import GradscopeError, GradscopeWarning, LogError
from gradscope.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.report import Report, report
from gradscope.run import Run, load
from gradscope.thresholds import Thresholds

if TYPE_CHECKING:
    from gradscope.scope import Watch, watch

_LAZY = {"watch": "gradscope.scope", "Watch": "gradscope.scope"}

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
    # Lazy: ``import gradscope`` stays cheap and torch-free until ``gradscope.watch`` is used.
    if name in _LAZY:
        import importlib

        obj = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = obj   # later lookups skip __getattr__
        return obj
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
