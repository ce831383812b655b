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
update size average out: on the 9000×300 layer of tests/measure/test_watch.py, 64 runs of 128 were 7% off the exact
ratio, 256 runs of 32 within the test's 5%)."""


class UpdateSampler:
    """The weight samples and norms of one recorded step, taken at its start.

    The samples live in buffers allocated once and refilled with one fused ``_foreach_copy_`` per record; at
    the record the difference is one fused ``_foreach_sub`` straight from the parameters: a fixed number of
    ops however many parameters (a view per parameter over ``UPDATE_SAMPLE`` entries, which launches
    nothing), instead of two copies per parameter. Everything runs under ``torch.no_grad()`` (the caller's),
    so nothing is detached.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        run = UPDATE_SAMPLE // UPDATE_BLOCKS
        # Per parameter: None (small: sampled whole) or (stride, run length) of its evenly spaced runs.
        self._layout: list[tuple[int, int] | None] = [
            None if (n := local(p).numel()) <= UPDATE_SAMPLE else (n // UPDATE_BLOCKS, run) for p in params]
        self._buffers: list[torch.Tensor] | None = None   # the samples at the start of the recorded step
        self._taken = False
        self._weight_norms: torch.Tensor | None = None

    def _views(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What is sampled of each parameter, as views (no copy): small ones whole, large ones as
        ``UPDATE_BLOCKS`` evenly spaced runs."""
        out = []
        for p, layout in zip(params, self._layout, strict=True):
            t = local(p)
            if layout is not None:
                stride, run = layout
                t = (t if t.is_contiguous() else t.reshape(-1)).as_strided((UPDATE_BLOCKS, run), (stride, 1))
            out.append(t)
        return out

    def snapshot(self, params: Sequence[torch.Tensor]) -> None:
        """At the start of a recorded step: the weight norms and the samples to compare with at its end."""
        if not params:
            return
        views = self._views(params)
        # The copies are in a dtype that never narrows: fp16/bf16 → fp32, fp64 stays fp64 (an fp64 model's
        # tiny updates would vanish in an fp32 difference).
        if self._buffers is None or any(b.shape != v.shape or b.dtype != wide(v.dtype) or b.device != v.device
                                        for b, v in zip(self._buffers, views, strict=True)):
            self._buffers = [torch.empty(v.shape, dtype=wide(v.dtype), device=v.device) for v in views]
        torch._foreach_copy_(self._buffers, views)
        self._taken = True
        self._weight_norms = norms([local(p) for p in params])

    def pieces(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(weight norms at the start, ||Δ sample||, ||sample at the start||), one value per parameter, or None
        when no snapshot was taken this step."""
        if not self._taken or self._buffers is None or self._weight_norms is None or not params:
            return None
        delta = torch.stack(torch._foreach_norm(torch._foreach_sub(self._views(params), self._buffers)))
        return self._weight_norms, delta, torch.stack(torch._foreach_norm(self._buffers))

    def clear(self) -> None:
        """The step is over: its snapshot no longer applies (the buffers are kept for the next one)."""
        self._taken = False
        self._weight_norms = None

    def release(self) -> None:
        self.clear()
        self._buffers = None
