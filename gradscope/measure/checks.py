"""The every-step checks: NaN/Inf in the forward pass and the gradients, the total gradient norm of every step,
and the AMP GradScaler's skipped steps. Computed on the device each step, read on the host at the next record
(no host sync per step).

What an unrecorded step adds (the hot path), whatever the depth of the model: at the end of the forward
pass one fused ``_foreach_norm(ord=inf)`` over the model outputs and the layer outputs that autograd still
holds, and at the end of backward one fused ``_foreach_norm`` over the parameter gradients — a fixed number of
ATen ops (two each, with their ``stack``), not one per layer. An infinity norm is exact for this: it is
non-finite if and only if the tensor holds a NaN/Inf, and it cannot overflow (a sum of squares can).

How exact the first NaN/Inf is: the STEP is exact (the model outputs and every gradient are checked on every
step). The LAYER is exact on recorded steps (every layer's output is counted there). On other steps a layer's
output is checked only if it is still alive at the end of the forward pass — held by autograd for backward,
which is the case for the input of a following ``Linear``/``Conv``/norm layer, GELU or SiLU, but not for the
output of a ``Linear`` followed by ReLU, tanh or sigmoid (those save their result instead). Holding every
output until then would add up to a copy of the activations to peak memory, so gradscope does not: the layer
named is the first one, in call order, whose output was checked and held the NaN/Inf, and a step whose
outputs were non-finite with no checked layer holding it is reported as ``where="output"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from gradscope._numbers import finite

_F32 = torch.float32
_F64 = torch.float64


class CheckKind(IntEnum):
    """What a checked value belongs to (its ``ids`` index layers, parameters or model outputs)."""

    ACTIVATION = 0   # a watched layer's output
    GRADIENT = 1     # a parameter's gradient (the value is its L2 norm)
    OUTPUT = 2       # one tensor of the model's output


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameters and gradients): statistics never trigger a collective."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def dense(t: torch.Tensor) -> torch.Tensor:
    """A strided tensor with the same norm: the values of a sparse gradient (``nn.Embedding(sparse=True)``),
    coalesced first so that repeated indices are summed as the optimizer sums them."""
    if t.layout == torch.strided:
        return t
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    return t.values()   # sparse CSR/CSC/BSR: the stored values


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a statistic of ``dtype`` values is taken in: fp16/bf16 widen to fp32, nothing narrows (a plain
    mapping: ``torch.promote_types`` is itself a dispatched op, and this runs per tensor per step)."""
    return _F32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _foreach_norm_takes_dtype() -> bool:
    try:
        return "dtype" in str(torch.ops.aten._foreach_norm.Scalar._schema)
    except Exception:  # pragma: no cover - a torch without the op schema
        return False


_NORM_DTYPE = _foreach_norm_takes_dtype()


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms as one 1-d tensor, in a dtype that never narrows: fp16/bf16 in fp32 (an fp16 norm
    overflows at 65504), fp32 in fp32 and fp64 in fp64 (``linalg.vector_norm`` refuses to narrow). One fused
    ``_foreach_norm`` (and its ``stack``) however many tensors."""
    ts = [dense(t) for t in tensors]
    dtypes = {t.dtype for t in ts}
    if dtypes <= {_F32}:
        return torch.stack(torch._foreach_norm(ts))
    acc_dtype = _F64 if _F64 in dtypes else _F32
    if _NORM_DTYPE and dtypes <= {torch.float16, torch.bfloat16, _F32, _F64}:
        return torch.stack(torch._foreach_norm(ts, dtype=acc_dtype))
    return torch.stack([torch.linalg.vector_norm(t, dtype=wide(t.dtype)) for t in ts])


def probe(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One value per tensor, non-finite if the tensor holds a NaN/Inf, in one fused op.

    On a GPU (and for anything but fp32 on the CPU): infinity norms, exact in any float dtype and unable to
    overflow. On the CPU, fp32 tensors take the L2 norm instead: torch's CPU infinity norm is ~20× slower than
    its L2 norm (22 ms vs 1 ms for four 8 MB activations, which made unrecorded steps of a small CNN 12%
    slower), and the L2 norm propagates NaN/Inf the same way. Its one difference: an output whose L2 norm
    exceeds fp32's range (~1.8e19 root-mean-square × √n) reads as non-finite — a signal that large has
    diverged anyway. Tensors on several devices (a model split across GPUs) are gathered on the first one's
    device."""
    ts = [local(t) for t in tensors]
    if all(t.dtype == _F32 and t.device.type == "cpu" for t in ts):
        values = torch._foreach_norm(ts)
    else:
        values = torch._foreach_norm(ts, ord=math.inf)
    try:
        return torch.stack(values)
    except RuntimeError:
        dev = values[0].device
        return torch.stack([v.to(dev) for v in values])


@dataclass
class Check:
    """One step's checked values on the device: ``segments`` say which kind and index each value is, in
    order; ``values`` is the 1-d tensor of all of them (non-finite = that place held a NaN/Inf; for
    gradients the L2 norms, which also give the step's total gradient norm)."""

    step: int
    segments: tuple[tuple[CheckKind, Sequence[int]], ...]
    values: torch.Tensor

    @property
    def gradients(self) -> bool:
        return len(self.segments) == 1 and self.segments[0][0] is CheckKind.GRADIENT


@dataclass(frozen=True)
class FirstNonFinite:
    step: int
    kind: CheckKind
    index: int   # into the layers, the parameters or the model outputs, by ``kind``


@dataclass
class CheckResults:
    totals: list[tuple[int, float | None]] = field(default_factory=list)   # (step, total gradient norm)
    first: FirstNonFinite | None = None
    skipped: set[int] = field(default_factory=set)   # steps whose gradients overflowed under a GradScaler


class PendingChecks:
    """The checks of the steps since the last record, on the device until the next one reads them."""

    def __init__(self) -> None:
        self.pending: list[Check] = []

    def add_forward(self, step: int, layer_ids: Sequence[int], layer_outputs: Sequence[torch.Tensor],
                    outputs: Sequence[torch.Tensor]) -> None:
        """The layer outputs and model outputs of one forward pass, in one fused reduction."""
        layer_ids = [i for i, t in zip(layer_ids, layer_outputs, strict=True) if t.numel()]
        layer_outputs = [t for t in layer_outputs if t.numel()]
        out_ids = [j for j, t in enumerate(outputs) if t.numel()]
        outputs = [t for t in outputs if t.numel()]   # an empty batch: nothing to check
        if not layer_outputs and not outputs:
            return
        segments = tuple((k, ids) for k, ids in ((CheckKind.ACTIVATION, layer_ids), (CheckKind.OUTPUT, out_ids))
                         if ids)
        self.pending.append(Check(step, segments, probe([*layer_outputs, *outputs])))

    def add_values(self, step: int, kind: CheckKind, ids: Sequence[int], values: Sequence[torch.Tensor]) -> None:
        """0-d tensors already computed, each non-finite iff its place held a NaN/Inf (a recorded step's
        per-layer min/max), as one check."""
        if ids:
            self.pending.append(Check(step, ((kind, list(ids)),), torch.stack(list(values))))

    def add_gradients(self, step: int, ids: Sequence[int], grad_norms: torch.Tensor) -> None:
        """One backward's parameter gradient norms. Another backward in the same step (gradient accumulation)
        replaces them: the gradients at the end of the last one are what the optimizer uses."""
        if self.pending and self.pending[-1].step == step and self.pending[-1].gradients:
            self.pending.pop()
        self.pending.append(Check(step, ((CheckKind.GRADIENT, ids),), grad_norms))

    def take(self) -> tuple[torch.Tensor | None, list[Check]]:
        """Every pending check as one 1-d tensor (for the record's single transfer) and their layout."""
        checks, self.pending = self.pending, []
        if not checks:
            return None, []
        return torch.cat([c.values.reshape(-1).to(_F64) for c in checks]), checks

    def clear(self) -> None:
        self.pending = []


def read(values: Sequence[float], checks: Sequence[Check], *, find: bool, scaler: bool) -> CheckResults:
    """Host side of the checks: the total gradient norm of each step, the first NaN/Inf (when ``find``), and
    the steps a GradScaler skipped (``scaler``: gradients that overflowed there are the scaler's business,
    not a divergence)."""
    out = CheckResults()
    off = 0
    for c in checks:
        for kind, ids in c.segments:
            chunk = values[off:off + len(ids)]
            off += len(ids)
            if kind is CheckKind.GRADIENT:
                sq = sum(v * v for v in chunk)
                ok = math.isfinite(sq)
                out.totals.append((c.step, finite(math.sqrt(sq)) if ok else None))
                if not ok and scaler:
                    out.skipped.add(c.step)
                    continue
            if find and out.first is None:
                bad = next((i for i, v in zip(ids, chunk, strict=True) if not math.isfinite(v)), None)
                if bad is not None:
                    out.first = FirstNonFinite(c.step, kind, bad)
    return out




class ScalerTracker:
    """The ``torch.amp.GradScaler`` of a mixed-precision loop: unscales gradient norms on the device and
    tells, without a sync, when the scaler skipped a step. Holds the scaler only (no model reference)."""

    def __init__(self, scaler: Any) -> None:
        self._scaler = scaler
        self._seen: tuple[int, int] | None = None   # (id, _version) of the scale tensor at backward
        self.skipped_now = False                     # this step was skipped by the scaler (seen sync-free)
        self.skipped_steps: set[int] = set()         # steps whose gradients overflowed under the scaler

    @property
    def active(self) -> Any:
        """The scaler, when there is one and it is enabled; else None."""
        scaler = self._scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
            return None
        return scaler

    def begin_step(self) -> None:
        self._seen = None
        self.skipped_now = False

    def unscale(self, grad_norms: torch.Tensor) -> torch.Tensor:
        """Norms of scaled gradients ÷ the scaler's scale, on the device (no sync). At the end of backward
        gradients are always still scaled: ``unscale_`` can only run after backward."""
        scaler = self.active
        if scaler is None:
            return grad_norms
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            self._seen = (id(scale), scale._version)
            return grad_norms / scale.to(device=grad_norms.device, dtype=grad_norms.dtype)
        get = getattr(scaler, "get_scale", None)   # a scaler-like object without a scale tensor: one host read
        return grad_norms / float(get()) if get is not None else grad_norms

    def step_was_skipped(self) -> bool:
        """With ``optimizer=``: the scaler ran ``update()`` since this step's backward (its scale tensor changed
        version, read without a sync) but the optimizer never stepped: the scaler skipped the step."""
        scaler = self.active
        scale = getattr(scaler, "_scale", None) if scaler is not None else None
        if self._seen is None or not isinstance(scale, torch.Tensor):
            return False
        if (id(scale), scale._version) != self._seen:
            self.skipped_now = True
            return True
        return False

    def release(self) -> None:
        self._scaler = None
