"""Thin adapters of ``gradscope.watch`` for training frameworks. Each is an optional extra, imported on use:

    from gradscope.integrations.lightning import GradscopeCallback     # pip install 'gradscope[lightning]'
    from gradscope.integrations.huggingface import GradscopeCallback   # pip install 'gradscope[huggingface]'

Importing this package imports neither framework (nor torch).
"""

from __future__ import annotations


def missing(framework: str, extra: str, err: ImportError) -> ImportError:
    """The ImportError raised when an optional framework is not installed: it says what to install."""
    return ImportError(f"gradscope.integrations.{extra} needs {framework}, which is not installed "
                       f"({err}); install it with: pip install 'gradscope[{extra}]'")
