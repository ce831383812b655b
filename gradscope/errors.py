"""Exceptions and warnings gradscope raises. Every message is one line a person can act on."""

from __future__ import annotations


class GradscopeError(Exception):
    """Base class of gradscope's errors."""


class LogError(GradscopeError):
    """A run log or log directory cannot be read; the message names the file (and line)."""


class GradscopeWarning(UserWarning):
    """Something the user should know that does not stop the run (a skipped log record, a replaced log)."""
