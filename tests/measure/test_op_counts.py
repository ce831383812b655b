"""CPU proxies for GPU cost (issue 9.5): the ATen ops gradscope adds to a training step, counted.

On a GPU a recorded step is launch-bound: what it costs is the number of kernels gradscope adds, not their
size. A ``TorchDispatchMode`` sees every ATen op, on any device, deterministically, so the count is a test:
ops during a watched step minus ops during the same step of an identical unwatched model. The bytes those
ops allocate are counted the same way (outputs that are not views), which catches an fp32 copy of a bf16
activation. What this cannot see: copies an op makes *inside* its CPU kernel (ATen's CPU ``sum`` with
``dtype=float32`` upcasts a bf16 input internally; its CUDA kernel reads bf16 and accumulates in fp32).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import gradscope
from gradscope.measure.reductions import LayerAcc, accumulate_grad, accumulate_output

RECORDED_OPS_PER_LAYER = 42
"""Bound on the ATen ops a recorded step adds per watched layer of an fp32 MLP (all of gradscope: 43 before
the reductions were fused, 41 after, 39 once the record assembly moved to assemble.py, 2026-11-29; a bf16
model also lost an fp32 copy per layer output and gradient). Of those, ``reductions`` (the statistics of
one output and its gradient) are bounded by ``REDUCTION_OPS`` below; the rest is the per-layer assembly
(``assemble.LayerStats._vector``: dead/inactive/saturated counts, dtype casts, one stack per layer) and the
parameter samples; ``reductions.layer_matrix`` does the assembly in O(1) ops (``HANDFUL_PER_LAYER``)."""

HANDFUL_PER_LAYER = 12
"""The target for a recorded step: a handful of ops per watched layer (xfail until the per-layer assembly in
assemble.py is batched across layers)."""

REDUCTION_OPS = 10
"""Bound on the ops of one ``accumulate_output`` call on a bf16 (or fp32) output (measured 8–9, of which
2 views: sum, Σx², aminmax, count_nonzero, the bounded NaN/Inf sample's sub + count_nonzero, per-unit amax)."""

GRAD_OPS = 3
"""Bound on the ops of one ``accumulate_grad`` call: one fp32-accumulating norm (and its square)."""

ALLOC_FRACTION = 0.10
"""A recorded step of a bf16 model may allocate at most 10% of its activations' bytes: an fp32 copy of each
bf16 activation (what the reductions used to make) is 200%."""


class OpCounter(TorchDispatchMode):
    """Counts ATen ops by name and the bytes of their outputs that are new storage (not views/in-place)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.bytes = 0
        self.sizes: list[int] = []   # bytes of each new output

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops[func.overloadpacket.__name__] += 1
        aliased = any(r.alias_info is not None for r in func._schema.returns)
        if not aliased:
            sizes = [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.sizes += sizes
            self.bytes += sum(sizes)
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _mlp(depth: int, width: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def _step_counts(depth: int, logdir: Path | None, *, steps: int = 4, width: int = 32, batch: int = 16,
                 bf16: bool = False) -> list[OpCounter]:
    """Per-step op counters of ``steps`` SGD steps of a ``depth``-layer ReLU MLP; watched when ``logdir`` is
    given, with ``every=3, warmup=1``: step 0 recorded, steps 1-2 not, step 3 recorded. ``optimizer=`` makes
    the record happen at the optimizer step, inside the step that is counted."""
    model = _mlp(depth, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, width, generator=g), torch.randint(0, 4, (batch,), generator=g)
    scope = (gradscope.watch(model, logdir, every=3, warmup=1, tensorboard=False, optimizer=opt)
             if logdir is not None else None)
    counters = []
    try:
        for _ in range(steps):
            c = OpCounter()
            with c:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)
                F.cross_entropy(out.float(), y).backward()
                opt.step()
            counters.append(c)
    finally:
        if scope is not None:
            scope.close()
    return counters


SYNCING_OPS = frozenset({"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique",
                         "_unique2", "unique_consecutive", "unique_dim", "is_nonzero", "equal", "repeat_interleave",
                         "bincount", "histc"})
"""ATen ops that make the host wait for a CUDA device: ``.item()``/``float(t)``/``if t:``
(``_local_scalar_dense``, ``is_nonzero``), outputs whose size depends on the data (``nonzero``, boolean-mask
indexing, ``masked_select``, ``unique``, ``repeat_interleave`` without output size, ``bincount``/``histc``
sizing their output from the data's max). ``.tolist()``/``.cpu()`` of the step's statistics is the one
allowed sync and is no ATen op on a CPU tensor, so on CPU a step must add none of these at all."""


def _added(depth: int, tmp: Path, step: int, **kw: Any) -> int:
    plain = _step_counts(depth, None, **kw)[step].total
    watched = _step_counts(depth, tmp / f"d{depth}", **kw)[step].total
    return watched - plain


UNRECORDED, RECORDED = 2, 3


def test_unrecorded_step_adds_ops_independent_of_depth(tmp_path: Path) -> None:
    """4 ops at 4 layers and at 64 (2026-11-29; the per-layer NaN/Inf probe made it 13 and 133)."""
    shallow, deep = _added(4, tmp_path, UNRECORDED), _added(64, tmp_path, UNRECORDED)
    assert deep == shallow, f"unrecorded step adds {shallow} ops at 4 layers, {deep} at 64"


def test_recorded_step_adds_a_bounded_number_of_ops_per_layer(tmp_path: Path) -> None:
    shallow, deep = _added(4, tmp_path, RECORDED), _added(64, tmp_path, RECORDED)
    per_layer = (deep - shallow) / 60
    assert 0 < per_layer <= RECORDED_OPS_PER_LAYER, f"{per_layer:.1f} ops per layer"


def test_recorded_step_adds_a_handful_of_ops_per_layer(tmp_path: Path) -> None:
    per_layer = (_added(64, tmp_path, RECORDED) - _added(4, tmp_path, RECORDED)) / 60
    assert per_layer <= HANDFUL_PER_LAYER, f"{per_layer:.1f} ops per layer"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,unit_dim", [((512, 512), -1), ((16, 32, 24, 24), 1), ((8, 64, 512), -1)])
def test_reductions_are_a_handful_of_ops_and_allocate_no_copy(dtype: torch.dtype, shape: tuple[int, ...],
                                                               unit_dim: int) -> None:
    """One output's statistics (a ReLU layer: no derivative) and one gradient's norm, counted directly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(dtype)
    acc = LayerAcc()
    c = OpCounter()
    with torch.no_grad(), c:
        accumulate_output(acc, x, unit_dim=unit_dim, act="relu")
    assert c.total <= REDUCTION_OPS, dict(c.ops)
    assert c.ops["_to_copy"] == 0, "a dtype copy of the activation"
    assert c.bytes <= ALLOC_FRACTION * x.numel() * x.element_size(), c.bytes
    cg = OpCounter()
    with torch.no_grad(), cg:
        accumulate_grad(acc, x)
    assert cg.total <= GRAD_OPS and cg.ops["_to_copy"] == 0, dict(cg.ops)
    assert acc.count == x.numel() and acc.unit_max is not None
    ref = x.double()
    assert acc.s is not None and acc.ss is not None and acc.gsq is not None
    assert float(acc.s) == pytest.approx(float(ref.sum()), rel=1e-4, abs=1e-2)
    assert float(acc.ss) == pytest.approx(float(ref.square().sum()), rel=1e-4)
    assert float(acc.gsq) == pytest.approx(float(ref.square().sum()), rel=1e-4)
    assert torch.equal(acc.unit_max, x.amax(dim=tuple(i for i in range(x.dim()) if i != unit_dim % x.dim())))


def test_bf16_recorded_step_allocates_no_fp32_copy_of_activations(tmp_path: Path) -> None:
    """A recorded step of a bf16-autocast MLP: the bytes gradscope's ops allocate stay under 10% of the
    bytes of the activations it reads (9 layers of 4096×128 bf16 outputs, 1 MiB each, and their gradients).
    The parameter samples of the update ratios (~100 KB per weight matrix, whatever the batch) are in the
    count too, hence a batch large enough for activations to dominate, as in real training."""
    depth, width, batch = 8, 128, 4096
    kw: dict[str, Any] = {"width": width, "batch": batch, "bf16": True}
    plain = _step_counts(depth, None, **kw)[RECORDED]
    watched = _step_counts(depth, tmp_path, **kw)[RECORDED]
    activations = (depth + 1) * batch * width * 2 * 2   # outputs (bf16) and their gradients (bf16)
    added = watched.bytes - plain.bytes
    assert added <= ALLOC_FRACTION * activations, f"{added} bytes added, activations {activations}"
    # Not one new buffer the size of a bf16 activation, let alone its fp32 copy:
    one = batch * width * 2
    assert sum(b >= one for b in watched.sizes) == sum(b >= one for b in plain.sizes)


def test_no_step_adds_an_op_that_waits_for_the_device(tmp_path: Path) -> None:
    """Host syncs stall the CPU's run-ahead of the GPU: neither an unrecorded nor a recorded step may add one
    (besides the record's single transfer, which is not an op on CPU). Histograms are off here (rare steps,
    documented syncs)."""
    plain = _step_counts(16, None)
    watched = _step_counts(16, tmp_path)
    for step in (UNRECORDED, RECORDED):
        extra = {op: watched[step].ops[op] - plain[step].ops[op] for op in SYNCING_OPS}
        assert {op: n for op, n in extra.items() if n} == {}, f"step {step}"


def test_sync_check_sees_an_item_call() -> None:
    c = OpCounter()
    with c:
        t = torch.ones(3)
        float(t.sum())
        t[t > 0].sum()
    assert c.ops["_local_scalar_dense"] == 1 and c.ops["nonzero"] + c.ops["index"] >= 1
