"""Merging the per-rank logs of one distributed run into one ``Run``."""

from __future__ import annotations

from gradscope.run import Run


def merge_ranks(runs: list[Run]) -> Run:
    """For now: rank 0's view (gradients are all-reduced under DDP, so its norms are the run's)."""
    base = runs[0]
    base.ranks = len(runs)
    return base
