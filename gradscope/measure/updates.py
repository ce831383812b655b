"""Update-to-weight ratios ||Δw|| / ||w|| of a recorded step, without a copy of the weights.

At the start of a recorded step the weight norms are taken and a fixed sample of each parameter is copied;
at its record the same sample is read again: the norm of the difference over the norm of the sample before
is the ratio (exact for tensors up to ``UPDATE_SAMPLE`` entries). Everything stays on the device until the
record's single transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradscope.measure.checks import local, norms, wide

UPDATE_SAMPLE = 8192
"""Update-to-weight ratios are computed on a fixed sample of at most 8192 entries per parameter (exact for
smaller tensors): ||Δw||/||w|| is a ratio, so a sample of that size estimates it within ~2% for dense updates,
and no copy of the weights is kept (a copy would add a model's size to peak memory)."""

UPDATE_BLOCKS = 256
"""The sample is 256 evenly spaced runs of 32 contiguous entries (two cache lines each), not 8192 scattered
ones: a scattered gather right after backward cost ~130 µs per weight matrix here, the runs a few µs, and 256
runs still spread over the whole tensor (256 different rows of a weight matrix, so per-unit differences in
update size average out: on the 9000×300 layer of tests/test_watch.py, 64 runs of 128 were 7% off the exact
ratio, 256 runs of 32 within the test's 5%)."""


class UpdateSampler:
    """The weight samples and norms of one recorded step, taken at its start."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        run = UPDATE_SAMPLE // UPDATE_BLOCKS
        # Per parameter: None (small: sampled whole) or (stride, run length) of its evenly spaced runs.
        self._layout: list[tuple[int, int] | None] = [
            None if (n := local(p).numel()) <= UPDATE_SAMPLE else (n // UPDATE_BLOCKS, run) for p in params]
        self._before: list[torch.Tensor] | None = None
        self._weight_norms: torch.Tensor | None = None

    def _sample(self, i: int, p: torch.Tensor) -> torch.Tensor:
        flat = local(p.detach()).reshape(-1)
        # A copy in a dtype that never narrows: fp16/bf16 → fp32, fp64 stays fp64 (an fp64 model's tiny
        # updates would vanish in an fp32 difference).
        dtype = wide(flat.dtype)
        layout = self._layout[i]
        if layout is None:
            return flat.to(dtype, copy=True)
        stride, run = layout
        return flat.as_strided((UPDATE_BLOCKS, run), (stride, 1)).to(dtype, copy=True)

    def snapshot(self, params: Sequence[torch.Tensor]) -> None:
        """At the start of a recorded step: the weight norms and the samples to compare with at its end."""
        if not params:
            return
        self._before = [self._sample(i, p) for i, p in enumerate(params)]
        self._weight_norms = norms([local(p.detach()) for p in params])

    def pieces(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(weight norms at the start, ||Δ sample||, ||sample at the start||), one value per parameter, or None
        when no snapshot was taken this step."""
        if self._before is None or self._weight_norms is None or not params:
            return None
        after = [self._sample(i, p) for i, p in enumerate(params)]
        delta = torch.stack(torch._foreach_norm(torch._foreach_sub(after, self._before)))
        return self._weight_norms, delta, torch.stack(torch._foreach_norm(self._before))

    def clear(self) -> None:
        self._before = None
        self._weight_norms = None
