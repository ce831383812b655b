"""The estimators in gradscope.measure.reductions against exact references, with tolerances from their
sample sizes (the exact-below-the-threshold cases are covered by tests/measure/test_watch.py's naive reference)."""

from __future__ import annotations

import math

import pytest
import torch

from gradscope.measure.reductions import (
    DERIVATIVE_SAMPLE,
    INPUT_SAMPLE,
    NONFINITE_SAMPLE,
    RAW_LAYER_COLUMNS,
    LayerAcc,
    _row_sample,
    _strided_sample,
    accumulate_grad,
    accumulate_output,
    input_stats,
    layer_matrix,
)


def _acc(x: torch.Tensor, unit_dim: int = -1, act: str | None = None) -> LayerAcc:
    acc = LayerAcc()
    with torch.no_grad():
        accumulate_output(acc, x, unit_dim=unit_dim, act=act)
    return acc


def test_saturation_derivative_on_a_large_output_is_estimated_per_unit() -> None:
    """4096×384 tanh inputs (3× DERIVATIVE_SAMPLE): ~1365 rows per unit. The per-unit mean of a derivative in
    [0, 1] with std ≤ 0.5 is then within 0.5/√1365 ≈ 0.014 (1σ); units are built far from the 0.1 threshold
    (scales 0.5 or 30: mean derivatives ~0.8 and ~0.03), so the saturated count is exact and the mean within 0.01."""
    g = torch.Generator().manual_seed(0)
    scale = torch.where(torch.arange(384) % 3 == 0, 30.0, 0.5)
    x = torch.randn(4096, 384, generator=g) * scale
    assert x.numel() > 2 * DERIVATIVE_SAMPLE
    acc = _acc(x, act="tanh")
    exact = (1 - torch.tanh(x.double()) ** 2).mean(0)
    assert acc.unit_dsum is not None and acc.unit_n < 4096
    est = acc.unit_dsum.double() / acc.unit_n
    assert int((est < 0.1).sum()) == int((exact < 0.1).sum()) == 128
    assert float(est.mean()) == pytest.approx(float(exact.mean()), abs=0.01)


def test_saturation_on_one_huge_feature_map_keeps_every_channel() -> None:
    """Batch 1, 16 channels × 192×192 (> DERIVATIVE_SAMPLE in one sample): channels survive thinning."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 192, 192, generator=g) * torch.linspace(0.2, 10, 16).reshape(1, 16, 1, 1)
    part = _row_sample(x, 1, DERIVATIVE_SAMPLE)
    assert part.shape[1] == 16 and part.numel() <= DERIVATIVE_SAMPLE
    acc = _acc(x, unit_dim=1, act="sigmoid")
    s = torch.sigmoid(x.double())
    exact = (4 * s * (1 - s)).mean(dim=(0, 2, 3))
    assert acc.unit_dsum is not None
    torch.testing.assert_close(acc.unit_dsum.double() / acc.unit_n, exact, atol=0.02, rtol=0)


def test_moments_and_extremes_are_exact_on_large_outputs() -> None:
    """Mean, variance (from Σx, Σx²), min, max, zeros and per-unit max read every element: exact (fp32 sums)."""
    g = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(2048, 512, generator=g) + 0.3)
    acc = _acc(x)
    ref = x.double()
    assert acc.s is not None and acc.ss is not None and acc.lo is not None and acc.hi is not None
    assert float(acc.s) / x.numel() == pytest.approx(float(ref.mean()), rel=1e-5)
    # Σx² of 1M fp32 terms (a BLAS dot): its rounding follows the kernel's SIMD lanes, 8e-7 with MKL/AVX-512,
    # ~3e-5 for 4 lanes accumulating in order (NEON); rel=1e-4 holds for any vectorized kernel.
    assert float(acc.ss) == pytest.approx(float(ref.square().sum()), rel=1e-4)
    assert float(acc.lo) == 0.0 and float(acc.hi) == float(x.max())
    assert int(acc.nonzero) == int((x != 0).sum())   # type: ignore[arg-type]
    assert acc.unit_max is not None and torch.equal(acc.unit_max, x.amax(0))


def test_nonfinite_count_is_a_scaled_sample_and_presence_is_exact() -> None:
    """1% NaN in 1M elements: the 4096-element sample sees ~41 of them, so the scaled count is within ±40%
    (3σ of a binomial with mean 41 is ±19). A single NaN the sample misses still makes Σx NaN (presence exact)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1 << 20, generator=g)
    bad = torch.randperm(x.numel(), generator=g)[: x.numel() // 100]
    y = x.clone()
    y[bad] = math.nan
    acc = _acc(y.reshape(1024, 1024))
    assert acc.nonfinite is not None
    assert float(acc.nonfinite) == pytest.approx(len(bad), rel=0.4)
    one = x.clone()
    one[12345] = math.inf
    acc1 = _acc(one.reshape(1024, 1024))
    assert acc1.s is not None and not math.isfinite(float(acc1.s)) and float(acc1.hi) == math.inf  # type: ignore[arg-type]
    assert x.numel() > NONFINITE_SAMPLE


def test_strided_sample_reads_distinct_elements_of_a_channels_last_tensor_without_copying() -> None:
    x = torch.arange(8 * 16 * 30 * 30, dtype=torch.float32).reshape(8, 16, 30, 30)
    cl = x.contiguous(memory_format=torch.channels_last)
    sample, scale = _strided_sample(cl, 1000)
    assert sample.untyped_storage().data_ptr() == cl.untyped_storage().data_ptr()   # a view
    assert sample.numel() <= 1000 and scale == pytest.approx(x.numel() / sample.numel())
    assert sample.unique().numel() == sample.numel()
    channels = (sample.long() // 900) % 16   # element value encodes its NCHW index
    assert channels.unique().numel() == 16


def test_input_stats_of_a_large_input_sample_moments_and_keep_extremes_exact() -> None:
    """Pixel-like input 64×3×64×64 (12× INPUT_SAMPLE): mean/std from ≥ 65536/... rows within 2%, per-channel
    std min/max within 5%, count/min/max exact."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(64, 3, 64, 64, generator=g) * torch.tensor([255.0, 100.0, 10.0]).reshape(1, 3, 1, 1)
    assert x.numel() > 10 * INPUT_SAMPLE
    st = input_stats(x).tolist()
    ref = x.double()
    assert st[0] == x.numel() and st[3] == float(x.min()) and st[4] == float(x.max())
    assert st[1] == pytest.approx(float(ref.mean()), rel=0.02)
    assert st[2] == pytest.approx(float(ref.std(correction=0)), rel=0.02)
    fstd = ref.transpose(0, 1).reshape(3, -1).std(1, correction=0)
    assert st[5] == pytest.approx(float(fstd.min()), rel=0.05)
    assert st[6] == pytest.approx(float(fstd.max()), rel=0.05)


def test_input_stats_on_bf16_input_keep_fp64_moments() -> None:
    x = (torch.arange(1000, dtype=torch.float32) + 1e4).to(torch.bfloat16).reshape(100, 10)
    st = input_stats(x).tolist()
    ref = x.double()
    assert st[1] == pytest.approx(float(ref.mean()), rel=1e-9)
    assert st[2] == pytest.approx(float(ref.std(correction=0)), rel=1e-9)


def _reference_row(acc: LayerAcc, age: torch.Tensor | None, seen: int, window: int, thr: float) -> tuple[
        list[float], torch.Tensor]:
    """The per-layer definition of a raw record row (what watch.py computed layer by layer), in float64: dead
    units on the layer's own clock (``seen``: the records it ran in, this one included)."""
    assert acc.unit_max is not None and acc.s is not None and acc.ss is not None
    active = acc.unit_max > 0
    units = acc.unit_max.numel()
    if age is None or age.numel() != units:
        age = torch.zeros((units,), dtype=torch.int64)
    age = torch.where(active, 0, age + 1)
    dead = float((age >= window).sum()) if seen >= window else math.nan
    if acc.unit_dsum is not None and acc.unit_n:
        per_unit = acc.unit_dsum.double() / acc.unit_n
        sat, dmean = float((per_unit < thr).sum()), float(per_unit.mean())
    else:
        sat = dmean = math.nan
    row = [float(acc.s), float(acc.ss), float(acc.lo), float(acc.hi), float(acc.nonzero),  # type: ignore[arg-type]
           float(acc.nonfinite), float(units), float((~active).sum()), dead, sat, dmean,  # type: ignore[arg-type]
           math.nan if acc.gsq is None else float(acc.gsq)]
    return row, age


def _layer_outputs(rec: int, g: torch.Generator) -> list[tuple[int, torch.Tensor, int, str | None, bool]]:
    """(layer, output, unit_dim, act, has_grad) for one record: a bf16 ReLU layer whose units die over time, a
    channels-first tanh layer, an fp32 sigmoid layer, a layer with no gradient, and one called only on even
    records (the layout changes between records)."""
    dying = torch.randn(32, 20, generator=g)
    dying[:, : min(rec * 3, 20)] = -1.0    # more units never positive as records go on
    out = [(0, torch.relu(dying).to(torch.bfloat16), -1, "relu", True),
           (1, torch.randn(4, 6, 5, 5, generator=g) * 3, 1, "tanh", True),
           (2, torch.randn(16, 9, generator=g) * torch.linspace(0.1, 9, 9), -1, "sigmoid", True),
           (3, torch.randn(8, 3, 7, generator=g), -1, None, False)]
    if rec % 2 == 0:
        out.append((4, torch.randn(10, 11, generator=g), -1, "gelu", True))
    return out


@pytest.mark.parametrize("window", [1, 3])
def test_layer_matrix_equals_the_per_layer_definition(window: int) -> None:
    g = torch.Generator().manual_seed(5)
    state: dict[int, torch.Tensor] = {}
    ref_state: dict[int, torch.Tensor] = {}
    seen: dict[int, int] = {}
    for rec in range(5):
        accs: dict[int, LayerAcc] = {}
        with torch.no_grad():
            for i, x, unit_dim, act, has_grad in _layer_outputs(rec, g):
                acc = accs.setdefault(i, LayerAcc())
                accumulate_output(acc, x, unit_dim=unit_dim, act=act)
                if i == 0:
                    accumulate_output(acc, x, unit_dim=unit_dim, act=act)   # a shared module: two calls
                if has_grad:
                    accumulate_grad(acc, torch.randn(x.shape, generator=g))
        ids = sorted(accs)
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
        matrix, last = layer_matrix([accs[i] for i in ids], [state.get(i) for i in ids],
                                    seen=[seen[i] for i in ids], dead_window=window, saturation_derivative=0.1)
        assert matrix.shape == (len(ids), len(RAW_LAYER_COLUMNS)) and matrix.dtype == torch.float32
        for k, i in enumerate(ids):
            want, ref_state[i] = _reference_row(accs[i], ref_state.get(i), seen[i], window, 0.1)
            state[i] = last[k]
            torch.testing.assert_close(matrix[k].double(), torch.tensor(want, dtype=torch.float64),
                                       rtol=1e-6, atol=1e-6, equal_nan=True, msg=f"record {rec}, layer {i}")
        assert torch.equal(torch.cat([state[i] for i in ids]), torch.cat([ref_state[i] for i in ids]))
    dead_col = RAW_LAYER_COLUMNS.index("dead")
    assert float(matrix[0, dead_col]) >= 12 - 3 * (window - 1)   # layer 0 lost 3 units per record


def test_layer_matrix_takes_the_same_ops_for_4_and_64_layers() -> None:
    """Assembling every layer's row is O(1) ATen ops in the number of layers, once the per-layout index
    tensors are cached (the first record of a layout creates them)."""
    from tests.measure.test_op_counts import OpCounter

    def ops(n_layers: int) -> int:
        g = torch.Generator().manual_seed(6)
        accs = []
        with torch.no_grad():
            for i in range(n_layers):
                acc = LayerAcc()
                x = torch.randn(8, 5 + i, generator=g)
                accumulate_output(acc, x, unit_dim=-1, act="tanh" if i % 3 == 0 else "relu")
                accumulate_grad(acc, x)
                accs.append(acc)
        state: list[torch.Tensor | None] = [None] * n_layers
        counts = []
        for rec in range(3):
            c = OpCounter()
            with c:
                _, new = layer_matrix(accs, state, seen=[rec + 1] * n_layers, dead_window=2,
                                      saturation_derivative=0.1)
            state = list(new)
            counts.append(c.total)
        return counts[-1]   # warm: per-layout index tensors cached, dead window full

    shallow, deep = ops(4), ops(64)
    # 56 measured (2026-11-29), 22 of them views that launch nothing: a constant, not a per-layer, cost.
    assert shallow == deep and deep <= 60, (shallow, deep)
