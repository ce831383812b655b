"""The write side on real torch models: correctness, identical training, cleanup, bad input."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeError, GradscopeWarning, LogError
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS
from tests.models import DictOut, SmallCNN, SmallRNN, SmallTransformer, Tricky, train_tricky

L = {f: i for i, f in enumerate(LAYER_FIELDS)}
P = {f: i for i, f in enumerate(PARAM_FIELDS)}


def _hook_count(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(m._backward_pre_hooks) + len(getattr(m, "_forward_hooks_always_called", {}))
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        n += len(p._backward_hooks or {})
    if opt is not None:
        n += len(opt._optimizer_step_post_hooks) + len(opt._optimizer_step_pre_hooks)
    return n


@pytest.mark.parametrize("every", [1, 10])
def test_training_is_bit_identical_with_and_without_gradscope(tmp_path: Path, every: int) -> None:
    torch.manual_seed(1)
    plain = Tricky()
    torch.manual_seed(1)
    watched = Tricky()
    torch.manual_seed(123)
    losses_a, state_a = train_tricky(plain, 40)
    rng_a = torch.get_rng_state()
    torch.manual_seed(123)
    with gradscope.watch(watched, tmp_path / "run", every=every) as scope:
        losses_b, state_b = train_tricky(watched, 40)
        assert scope.step == 39
    rng_b = torch.get_rng_state()
    assert losses_a == losses_b                      # exact, not approximately
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    assert torch.equal(rng_a, rng_b)                 # the global RNG was not touched
    log = read_log(log_path(tmp_path / "run"))
    assert log.close is not None
    assert [r.step for r in log.steps][:5] == [0, 1, 2, 3, 4]
    if every == 1:
        assert len(log.steps) == 40
    # the shared module was called twice per step, and eval passes were not counted
    shared = [la.name for la in log.header.layers].index("shared")
    assert all(r.layers[shared][L["calls"]] == 2 for r in log.steps)
    assert log.activations == {"bn": "relu", "shared": "tanh"}


def test_statistics_match_a_naive_reference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 300), nn.ReLU(), nn.Linear(300, 9000), nn.Tanh(), nn.Linear(9000, 2))
    with torch.no_grad():
        model[0].bias.fill_(-0.3)   # some inactive units
    x = torch.randn(40, 6) * 3 + 1
    y = torch.randint(0, 2, (40,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    outs: dict[int, torch.Tensor] = {}
    for i in (0, 2, 4):
        model[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scope = gradscope.watch(model, tmp_path, every=1, tensorboard=False)
    opt.zero_grad()
    out = model(x)
    for o in outs.values():
        o.retain_grad()
    F.cross_entropy(out, y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    scope.close()

    rec = read_log(log_path(tmp_path)).steps[0]
    for li, mi in enumerate((0, 2, 4)):
        z = outs[mi].detach().double()
        row = rec.layers[li]
        assert row[L["count"]] == z.numel()
        assert row[L["mean"]] == pytest.approx(z.mean().item(), rel=1e-5, abs=1e-6)
        assert row[L["var"]] == pytest.approx(z.var(correction=0).item(), rel=1e-4)
        assert row[L["absmax"]] == pytest.approx(z.abs().max().item(), rel=1e-6)
        assert row[L["zero_frac"]] == pytest.approx((z == 0).double().mean().item())
        assert row[L["units"]] == z.shape[1]
        assert row[L["inactive"]] == int((z.amax(0) <= 0).sum())
        # fp32 Σg² over up to 360,000 elements: its rounding follows the SIMD lanes the kernel accumulates in
        # (~1e-5 of the norm with NEON's 4, 8e-5 fully sequential): exact fp64 reference, rel=1e-4.
        assert row[L["grad_norm"]] == pytest.approx(outs[mi].grad.double().norm().item(), rel=1e-4)
        assert row[L["nonfinite"]] == 0
    t = torch.tanh(outs[2].detach().double())
    per_unit = (1 - t**2).mean(0)
    assert rec.layers[1][L["dmean"]] == pytest.approx(per_unit.mean().item(), rel=1e-5)
    assert rec.layers[1][L["saturated"]] == int((per_unit < 0.1).sum())
    total = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads.values()))
    # The 2.7M-entry weight's fp32 gradient norm is off by 1.4e-4 with 8 SIMD lanes, 3.4e-4 with NEON's 4; as
    # 4% of Σg², that moves the total by ~5e-6 on x86, ~1.3e-5 on arm64, 7e-5 fully sequential.
    assert rec.grad_norm == pytest.approx(total, rel=1e-4)
    names = [p.name for p in read_log(log_path(tmp_path)).header.params]
    for j, n in enumerate(names):
        g, norm, ratio, bad = rec.params[j]
        assert g == pytest.approx(grads[n].norm().item(), rel=1e-5)
        assert norm == pytest.approx(w_before[n].norm().item(), rel=1e-5)
        exact = (dict(model.named_parameters())[n].detach() - w_before[n]).norm() / w_before[n].norm()
        # 2.7M-entry weight: estimated from a fixed sample of 8192 entries
        tol = 1e-4 if w_before[n].numel() <= 8192 else 0.05
        assert ratio == pytest.approx(exact.item(), rel=tol)
        assert bad == 0.0
    inp = rec.input
    assert inp is not None and inp.mean == pytest.approx(x.double().mean().item())
    assert inp.std == pytest.approx(x.double().std(correction=0).item())
    assert inp.max == pytest.approx(x.max().item())
    assert inp.feature_std_min == pytest.approx(x.double().std(0, correction=0).min().item())


@pytest.mark.parametrize("make,data", [
    (SmallCNN, lambda: (torch.randn(8, 3, 12, 12), torch.randint(0, 4, (8,)))),
    (lambda: SmallRNN(nn.LSTM), lambda: (torch.randn(8, 5, 6), torch.randint(0, 2, (8,)))),
    (lambda: SmallRNN(nn.GRU), lambda: (torch.randn(8, 5, 6), torch.randint(0, 2, (8,)))),
    (SmallTransformer, lambda: (torch.randint(0, 20, (4, 7)), torch.randint(0, 20, (4, 7)))),
    (DictOut, lambda: (torch.randn(8, 5), torch.randint(0, 2, (8,)))),
])
def test_architectures(tmp_path: Path, make, data) -> None:
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data()
    with gradscope.watch(model, tmp_path, every=2):
        for _ in range(6):
            opt.zero_grad()
            out = model(x)
            if isinstance(out, dict):
                loss = F.cross_entropy(out["logits"], y) + out["aux"]
            else:
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
            opt.step()
        assert _hook_count(model) > 0
    assert _hook_count(model) == 0
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2, 3, 4]
    for r in log.steps:
        for name, row in zip(log.header.layers, r.layers, strict=True):
            assert row is not None, name
            assert row[L["grad_norm"]] is not None and row[L["grad_norm"]] > 0, name.name
        assert all(p is not None and p[P["grad_norm"]] is not None for p in r.params)
        assert r.grad_norm is not None and r.grad_norm > 0
    types = {la.type for la in log.header.layers}
    if make is SmallTransformer:
        assert "MultiheadAttention" in types
        assert log.activations.get("enc.layers.0.linear1") == "relu"   # functional activation inside
    if make is SmallCNN:
        assert log.activations == {"b1": "relu", "c2": "relu"}
        c1 = log.header.layers[0]
        assert (c1.unit_dim, c1.fan_in, c1.fan_out) == (1, 27, 72)


def test_hooks_removed_after_exception_and_model_not_kept(tmp_path: Path) -> None:
    model = Tricky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_count(model, opt)
    with pytest.raises(RuntimeError, match="boom"), gradscope.watch(model, tmp_path, optimizer=opt) as scope:
        opt.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        raise RuntimeError("boom")
    assert scope.closed
    assert _hook_count(model, opt) == before == 0
    scope.close()   # idempotent
    ref = weakref.ref(model)
    del model, opt
    gc.collect()
    assert ref() is None, "gradscope kept the model alive"
    assert read_log(log_path(tmp_path)).close is not None


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, tmp_path, optimizer=opt, every=1) as scope:
        for _ in range(3):
            opt.zero_grad()
            for _ in range(4):
                model(torch.randn(5, 4)).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
        assert scope.step == 2
    log = read_log(log_path(tmp_path))
    assert log.header.step_unit == "optimizer"
    assert [r.step for r in log.steps] == [0, 1, 2]
    assert all(r.layers[0][L["calls"]] == 4 and r.layers[0][L["count"]] == 4 * 5 * 8 for r in log.steps)
    assert all(r.lr == (0.1,) for r in log.steps)
    assert all(r.grad_norm > 1e-3 for r in log.steps)   # the pre-clip norm, not the clipped one
    assert log.header.optimizer["class"] == "SGD"


def test_nonfinite_first_step_and_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(GradscopeWarning, match=r"first NaN/Inf at step 7 in activations of model\[2\]"), \
            gradscope.watch(model, tmp_path, every=50, tensorboard=False):
        for step in range(12):
            if step == 7:
                with torch.no_grad():
                    model[2].weight[0, 0] = float("inf")
            opt.zero_grad()
            model(torch.randn(6, 3)).mean().backward()
            opt.step()
    log = read_log(log_path(tmp_path))
    assert [(r.step, r.where, r.layer) for r in log.nonfinite] == [(7, "activation", "2")]


def test_nonfinite_loss_via_log(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    with pytest.warns(GradscopeWarning, match="step 0 in the loss"), \
            gradscope.watch(model, tmp_path, tensorboard=False) as scope:
        scope.log(train_loss=float("nan"))
    log = read_log(log_path(tmp_path))
    assert log.metrics[0].values == {"train_loss": None}
    assert log.nonfinite[0].where == "loss"


def test_dead_units_and_saturation_are_judged_per_unit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 1))
    with torch.no_grad():
        model[0].bias[:15] = -100.0           # 15 of 20 ReLU units can never fire
        model[2].weight.mul_(200.0)            # tanh pinned at ±1
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with gradscope.watch(model, tmp_path, every=1, dead_window=3):
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(64, 10)).mean().backward()
            opt.step()
    log = read_log(log_path(tmp_path))
    first, last = log.steps[0], log.steps[-1]
    assert first.layers[0][L["dead"]] is None          # not enough evidence before the window fills
    assert last.layers[0][L["dead"]] == 15
    assert last.layers[0][L["inactive"]] == 15
    assert last.layers[1][L["saturated"]] >= 27
    assert last.layers[1][L["dmean"]] < 0.1
    assert last.layers[2][L["dead"]] is not None   # judged on every layer; the rules read layer.act


def test_healthy_relu_layer_has_no_dead_units_despite_sparsity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, tmp_path, every=1):
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(32, 10)).mean().backward()
            opt.step()
    last = read_log(log_path(tmp_path)).steps[-1]
    z = last.layers[0]
    assert z[L["dead"]] == 0


def test_every_and_layer_filter(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, tmp_path, every=4, warmup=2, layers=["0", "2"], tensorboard=False) as scope:
        assert scope.layers == ["0", "2"]
        for _ in range(15):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 4, 8, 12]
    assert [s for s, _ in log.grad_norms] == [13, 14]    # the tail after the last record, written by close()
    assert [la.name for la in log.header.layers] == ["0", "2"]
    assert len(log.header.params) == 6      # gradients of every parameter are still recorded
    every_step = [s for r in log.steps for s, _ in r.grad_norm_steps]
    assert every_step == list(range(13))


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Module, got str"):
        gradscope.watch("model", tmp_path)   # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LogError, match="cannot write the gradscope log"):
        gradscope.watch(nn.Linear(2, 2), blocker / "sub")
    model = nn.Linear(2, 2)
    with gradscope.watch(model, tmp_path / "a", tensorboard=False), \
            pytest.raises(GradscopeError, match="already watched"):
        gradscope.watch(model, tmp_path / "b")


def test_model_without_parameters(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Tanh(), nn.ReLU())
    x = torch.randn(4, 3, requires_grad=True)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False):
        for _ in range(3):
            model(x).sum().backward()
    log = read_log(log_path(tmp_path))
    assert [la.type for la in log.header.layers] == ["Tanh", "ReLU"]
    assert log.header.params == ()
    assert len(log.steps) == 3 and log.steps[0].layers[0][L["count"]] == 12


def test_log_survives_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import torch, gradscope
        from torch import nn
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        scope = gradscope.watch(model, {str(tmp_path)!r}, every=1, tensorboard=False)
        i = 0
        while True:
            opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step(); i += 1
            if i == 20:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    path = log_path(tmp_path)
    lines = path.read_text().splitlines()
    intact = sum(1 for ln in lines if _is_json(ln))
    assert intact >= len(lines) - 1 >= 20
    with pytest.warns(GradscopeWarning) if intact < len(lines) else _nullcontext():
        log = read_log(path)
    assert len(log.steps) >= 19 and log.close is None


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_check_finite_off_reads_gradients_on_recorded_steps_only(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, tmp_path, every=4, warmup=1, check_finite=False, tensorboard=False):
        for step in range(9):
            if step == 6:
                with torch.no_grad():
                    model[2].weight.fill_(float("nan"))
            opt.zero_grad()
            model(torch.randn(5, 3)).sum().backward()
            opt.step()
    log = read_log(log_path(tmp_path))
    assert [s for r in log.steps for s, _ in r.grad_norm_steps] == [0, 4, 8]
    assert log.nonfinite == []            # no every-step check, as asked
    assert log.steps[-1].grad_norm is None   # but the recorded step still shows the NaN gradient
