"""Training-side robustness (issue 13.1): odd models, odd batches, odd arguments and odd environments never
cost the user their training run, and a script that never closes its watch exits with its own code."""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeError, GradscopeWarning
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS
from tests.measure.test_watch import _hook_count

L = {f: i for i, f in enumerate(LAYER_FIELDS)}
P = {f: i for i, f in enumerate(PARAM_FIELDS)}


def _sgd_run(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
             logdir: Path | None, **options: object) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scope = gradscope.watch(model, logdir, optimizer=opt, **options) if logdir is not None else None
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction="sum")
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if scope is not None:
        scope.close()
    return losses


# ------------------------------------------------------------------------------------------ models and data
def test_float64_model_keeps_fp64_gradient_norms(tmp_path: Path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
               for _ in range(4)]
    want = _sgd_run(make(), batches, None)
    # The parameter side (gradient norms, weight norms, update ratios, checks) is this room's: warning-free.
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        got = _sgd_run(model, batches, tmp_path / "params", every=1, tensorboard=False, layers=lambda n, m: False)
    assert got == want
    rec = read_log(log_path(tmp_path / "params")).steps[0]
    ref = make()
    x, y = batches[0]
    F.cross_entropy(ref(x), y, reduction="sum").backward()
    for j, p in enumerate(ref.parameters()):
        row = rec.params[j]
        assert row is not None and row[P["grad_norm"]] == pytest.approx(p.grad.norm().item(), rel=1e-6)
        assert row[P["update_ratio"]] is not None and row[P["update_ratio"]] > 0
    # With every layer watched (and TensorBoard on) the run trains identically, warning-free, and the layer
    # statistics are there: fp64 activations are reduced without narrowing.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        assert _sgd_run(make(), batches, tmp_path / "all", every=1, histograms=1) == want
    log = read_log(log_path(tmp_path / "all"))
    assert not log.problems
    assert all(row is not None for row in log.steps[0].layers)


def test_sparse_embedding_gradients(tmp_path: Path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Linear(8, 3))

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 50, (16,), generator=g), torch.randint(0, 3, (16,), generator=g))
               for _ in range(4)]
    want = _sgd_run(make(), batches, None)
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        got = _sgd_run(model, batches, tmp_path, every=1, histograms=1)   # TensorBoard histograms on, too
    assert got == want
    ref = make()
    x, y = batches[0]
    F.cross_entropy(ref(x), y, reduction="sum").backward()
    dense = ref[0].weight.grad.to_dense()
    rec = read_log(log_path(tmp_path)).steps[0]
    assert rec.params[0][P["grad_norm"]] == pytest.approx(dense.norm().item(), rel=1e-5)   # duplicates summed
    assert rec.grad_norm is not None and math.isfinite(rec.grad_norm)


def test_an_empty_batch_is_skipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    sizes = [8, 0, 8, 0]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        _sgd_run(model, batches, tmp_path, every=1, tensorboard=False)
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2, 3]
    assert log.steps[1].layers == (None, None) and log.steps[1].input is None   # nothing to measure
    assert log.steps[2].layers[0][L["count"]] == 8 * 16 and log.steps[2].input is not None
    assert log.nonfinite == []


def test_a_lone_surrogate_in_a_module_name_does_not_stop_training(tmp_path: Path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        m = nn.Sequential()
        m.add_module("\ud800", nn.Linear(4, 8))
        m.add_module("act", nn.ReLU())
        m.add_module("out", nn.Linear(8, 3))
        return m

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    want = _sgd_run(make(), batches, None)
    model = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _sgd_run(model, batches, tmp_path, every=1, histograms=1)
    assert got == want
    ours = [str(w.message) for w in caught if issubclass(w.category, GradscopeWarning)]
    assert len(ours) <= 1 and all("TensorBoard" in m for m in ours)   # at worst the mirror is off
    assert len(read_log(log_path(tmp_path), warn=False).steps) == 3      # the log has everything


# ------------------------------------------------------------------------------------------- arguments
def test_log_rejects_out_of_range_steps_before_writing(tmp_path: Path) -> None:
    with gradscope.watch(nn.Linear(2, 1), tmp_path, tensorboard=False) as scope:
        for bad in (2**63, -1, 2**53 + 1):
            with pytest.raises(ValueError, match="out of range"):
                scope.log(step=bad, train_loss=1.0)
        for bad in (1.5, "3", True, [3]):
            with pytest.raises(TypeError, match="integer"):
                scope.log(step=bad, train_loss=1.0)   # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a float can hold"):
            scope.log(x=10**400)
        with pytest.raises(TypeError, match="one-element tensor"):
            scope.log(x=torch.ones(2))
        scope.log(step=2**53, train_loss=1.0)
        scope.log(step=4.0, train_loss=2.0)                # an integral float is a step
    log = read_log(log_path(tmp_path))
    assert [(m.step, m.values) for m in log.metrics] == [(2**53, {"train_loss": 1.0}), (4, {"train_loss": 2.0})]


def test_rank_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(GradscopeError, match="RANK='abc' is not an integer"):
        gradscope.watch(nn.Linear(2, 1), tmp_path / "a", tensorboard=False)
    assert not (tmp_path / "a").exists()           # refused before anything was written
    monkeypatch.setenv("RANK", "-3")
    with pytest.raises(GradscopeError, match="RANK=-3"):
        gradscope.watch(nn.Linear(2, 1), tmp_path / "b", tensorboard=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(GradscopeError, match="WORLD_SIZE=0"):
        gradscope.watch(nn.Linear(2, 1), tmp_path / "c", tensorboard=False)
    monkeypatch.setenv("RANK", "-1")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.warns(GradscopeWarning, match="RANK=-1 is read as rank 0"), \
            gradscope.watch(nn.Linear(2, 1), tmp_path / "d", tensorboard=False) as scope:
        assert (scope.rank, scope.world_size) == (0, 1)
    assert log_path(tmp_path / "d", 0).exists()


# ------------------------------------------------------------------------------------- lifetime and exit
def test_no_reference_cycle_between_model_and_watch(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gc.disable()
    try:
        scope = gradscope.watch(model, tmp_path, optimizer=opt, tensorboard=False)
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        scope.close()
        ref = weakref.ref(scope)
        del scope
        assert ref() is None, "the watch is kept alive by a reference cycle"   # freed without the gc
        ref_model = weakref.ref(model)
        del model, opt
        assert ref_model() is None, "the model is kept alive by a reference cycle"
    finally:
        gc.enable()


def test_a_dropped_watch_is_released_with_a_warning(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    gc.disable()
    try:
        with pytest.warns(GradscopeWarning, match="garbage-collected without close"):
            gradscope.watch(model, tmp_path, tensorboard=False)   # the handle is not kept
    finally:
        gc.enable()
    assert _hook_count(model) == 0
    model(torch.randn(2, 3)).sum().backward()               # and the model trains on, unwatched
    lines = [json.loads(ln) for ln in log_path(tmp_path).read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[-1]["kind"] == "close"


_NEVER_CLOSED = textwrap.dedent("""
    import sys, torch, gradscope
    from torch import nn
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scope = gradscope.watch(model, sys.argv[1], every=1, tensorboard=sys.argv[2] == "tb")
    for i in range(5):
        opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step()
    if sys.argv[3] == "raise":
        raise RuntimeError("the loop failed")
""")


@pytest.mark.parametrize("tb", ["tb", "notb"])
@pytest.mark.parametrize("end,code", [("return", 0), ("raise", 1)])
def test_a_script_that_never_closes_exits_with_its_own_code(tmp_path: Path, tb: str, end: str, code: int) -> None:
    out = subprocess.run([sys.executable, "-c", _NEVER_CLOSED, str(tmp_path), tb, end], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == code, out.stderr[-3000:]        # not 134 (SIGABRT in torch's teardown)
    assert "INTERNAL ASSERT" not in out.stderr and "Exception ignored" not in out.stderr
    log = read_log(log_path(tmp_path))
    assert log.close is not None and [r.step for r in log.steps] == [0, 1, 2, 3, 4]


def test_deepcopy_and_torch_save_of_a_watched_model(tmp_path: Path) -> None:
    """An EMA copy, a best-model copy kept in memory, ``torch.save(model)``: a copy of a watched model gets
    inert hooks (it is not watched, and nothing of the watch or its open log file is copied), the original
    keeps recording, and a copy may be watched on its own."""
    import copy
    import io

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    with gradscope.watch(model, tmp_path / "orig", every=1, tensorboard=False) as scope:
        model(x).sum().backward()
        twin = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for other in (twin, loaded):
            before = scope.step
            torch.testing.assert_close(other(x), model(x))
            other(x).sum().backward()        # the copy's passes are not steps of the original watch
            assert scope.step == before + 1  # (+1: the original's own forward above)
        model(x).sum().backward()
        with gradscope.watch(twin, tmp_path / "twin", every=1, tensorboard=False):
            twin(x).sum().backward()
    assert len(read_log(log_path(tmp_path / "twin")).steps) == 1
    assert len(read_log(log_path(tmp_path / "orig")).steps) == 4
