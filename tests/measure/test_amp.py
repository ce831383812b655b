"""Mixed precision and clipping: bf16 autocast, a real ``torch.amp.GradScaler`` on CPU, and clip detection.

``torch.amp.GradScaler("cpu")`` works in torch 2.13 (fp16 autocast on CPU too). With an initial scale of 2**24
the fp16 backward really overflows, so the first steps are really skipped by the scaler until it has backed
off: the tests see real skipped steps, not a simulation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.load import load_run
from gradscope.store.schema import LAYER_FIELDS, PARAM_FIELDS

L = {f: i for i, f in enumerate(LAYER_FIELDS)}
P = {f: i for i, f in enumerate(PARAM_FIELDS)}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))


def _data(steps: int, n: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(n, 12, generator=g) * 3, torch.randint(0, 4, (n,), generator=g)) for _ in range(steps)]


def _train_bf16(model: nn.Module, steps: int, logdir: Path | None) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scope = gradscope.watch(model, logdir, every=1, tensorboard=False) if logdir is not None else None
    losses = []
    for x, y in _data(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if scope is not None:
        scope.close()
    return losses


def test_bf16_autocast_trains_identically_and_statistics_are_fp32(tmp_path: Path) -> None:
    plain, watched, ref = _mlp(), _mlp(), _mlp()
    a = _train_bf16(plain, 8, None)
    b = _train_bf16(watched, 8, tmp_path / "bf16")
    assert a == b
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)
    # fp32 reference: the same first step without autocast
    with gradscope.watch(ref, tmp_path / "fp32", every=1, tensorboard=False):
        x, y = _data(1)[0]
        F.cross_entropy(ref(x), y).backward()
    bf, fp = read_log(log_path(tmp_path / "bf16")).steps[0], read_log(log_path(tmp_path / "fp32")).steps[0]
    for row_b, row_f in zip(bf.layers, fp.layers, strict=True):
        assert row_b is not None and row_f is not None
        assert all(v is None or math.isfinite(v) for v in row_b)
        assert row_b[L["count"]] == row_f[L["count"]]
        for f in ("mean", "var", "absmax", "grad_norm"):
            # bf16 keeps 8 bits of mantissa: the activations themselves differ by ~0.4%; the statistics
            # of them are accumulated in fp32 (a bf16 sum of 2000 elements would be off by far more).
            assert row_b[L[f]] == pytest.approx(row_f[L[f]], rel=0.03, abs=0.01), f
    assert bf.grad_norm == pytest.approx(fp.grad_norm, rel=0.03)


def _scaler_loop(model: nn.Module, steps: int, scaler: torch.amp.GradScaler, *, clip: float | None = None,
                 probe: list[tuple[float, float]] | None = None) -> list[float]:
    """The documented AMP loop (unscale_ before clipping). ``probe`` gets (scale before, after) per step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for x, y in _data(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if probe is not None:
            probe.append((before, scaler.get_scale()))
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_grad_scaler_skipped_steps_are_labelled_not_divergence(tmp_path: Path, with_optimizer: bool) -> None:
    probe: list[tuple[float, float]] = []
    plain_losses = _scaler_loop(_mlp(), 10, torch.amp.GradScaler("cpu", init_scale=2.0**24), probe=probe)
    skipped_ref = [i for i, (b, a) in enumerate(probe) if a < b]   # the scaler backs off exactly on a skip
    assert skipped_ref and skipped_ref[0] == 0 and len(skipped_ref) < 10

    model, scaler = _mlp(), torch.amp.GradScaler("cpu", init_scale=2.0**24)
    opt_probe: list[torch.optim.Optimizer] = []
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_probe.append(opt)
    # No GradscopeWarning may be raised (pytest turns it into an error): a skipped step is not a NaN report.
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, scaler=scaler,
                         optimizer=opt if with_optimizer else None):
        losses = []
        for x, y in _data(10):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
    assert losses == plain_losses
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == list(range(10))   # a skipped step is still one step
    assert [r.step for r in log.steps if r.skipped] == skipped_ref
    assert log.nonfinite == []
    run = load_run(tmp_path)
    assert run.skipped.tolist() == [i in skipped_ref for i in range(10)]
    good = [r for r in log.steps if not r.skipped]
    assert all(r.grad_norm is not None and r.grad_norm < 100 for r in good)   # unscaled: not × 2**16


def test_grad_scaler_norms_are_of_unscaled_gradients_and_clipping_is_seen(tmp_path: Path) -> None:
    model, scaler = _mlp(), torch.amp.GradScaler("cpu", init_scale=256.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pre_clip: list[float] = []
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, scaler=scaler, optimizer=opt):
        for x, y in _data(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            pre_clip.append(math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters())))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
    log = read_log(log_path(tmp_path))
    assert not any(r.skipped for r in log.steps)
    assert [r.grad_norm for r in log.steps] == pytest.approx(pre_clip, rel=1e-5)   # unscaled, before the clip
    assert [r.clip_norm for r in log.steps] == pytest.approx([0.05] * 4, rel=1e-4)  # what the optimizer got
    assert load_run(tmp_path).clipping


def test_clipping_detected_only_when_it_binds(tmp_path: Path) -> None:
    for name, max_norm in (("tight", 1e-3), ("loose", 1e6)):
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        with gradscope.watch(model, tmp_path / name, every=2, tensorboard=False, optimizer=opt):
            for x, y in _data(6):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
        run = load_run(tmp_path / name)
        assert np.isfinite(run.clip_norm).all() and run.clip_norm.size == run.steps.size
        assert run.clipping is (name == "tight")
        assert (run.grad_norm > 1e-2).all()      # the recorded norm stays the pre-clip one
    # Without optimizer= there is no optimizer-step view: no claim either way.
    model = _mlp()
    with gradscope.watch(model, tmp_path / "noopt", every=1, tensorboard=False):
        x, y = _data(1)[0]
        F.cross_entropy(model(x), y).backward()
    run = load_run(tmp_path / "noopt")
    assert np.isnan(run.clip_norm).all() and not run.clipping


class _ManualScaler:
    """A scaler-like object without a scale tensor (a hand-written static loss scale)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def get_scale(self) -> float:
        return self.scale


def test_scaler_like_object_with_a_static_scale(tmp_path: Path) -> None:
    model, ref = _mlp(), _mlp()
    x, y = _data(1)[0]
    F.cross_entropy(ref(x), y).backward()
    want = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in ref.parameters()))
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, scaler=_ManualScaler(1024.0)):
        (F.cross_entropy(model(x), y) * 1024.0).backward()
    assert read_log(log_path(tmp_path)).steps[0].grad_norm == pytest.approx(want, rel=1e-5)


def test_report_says_clipping_is_active(tmp_path: Path) -> None:
    from gradscope.show.report import CLIPPING_NOTE, report

    for name, max_norm in (("tight", 1e-3), ("loose", 1e6)):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        with gradscope.watch(model, tmp_path / name, every=1, tensorboard=False, optimizer=opt):
            for x, y in _data(3):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
        rep = report(tmp_path / name)
        assert (CLIPPING_NOTE in rep.to_markdown()) == (name == "tight")
        assert json.loads(rep.to_json())["run"]["clipping"] == (name == "tight")


def test_skips_between_recorded_steps_are_the_scalers_not_divergence(tmp_path: Path) -> None:
    """A step the scaler skips between two recorded steps leaves a NaN total gradient norm in the record's
    per-step norms and no ``skipped`` flag (a record flags its own step only): the header says a scaler was
    passed, so the reader knows that every such step was a skip, and no divergence is reported."""
    from gradscope.judge.diagnose import diagnose

    # Steps 0, 6, 12, ... are recorded; steps 9 and 15 overflow on purpose (their loss × 1e30 has no fp16
    # gradient), whatever the CPU's rounding, and the scale never grows into an overflow of its own.
    model, scaler = _mlp(), torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, tmp_path, every=6, warmup=0, tensorboard=False, scaler=scaler,
                         optimizer=opt) as scope:
        for step, (x, y) in enumerate(_data(30)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss * (1e30 if step in (9, 15) else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
            scope.log(train_loss=loss.item())
    run = load_run(tmp_path)
    assert run.header is not None and run.header.extra["amp_scaler"] is True
    nan_steps = set(run.all_steps[~np.isfinite(run.all_grad_norm)].tolist())
    assert nan_steps == {9, 15} and not run.skipped.any(), "the test needs skips between recorded steps only"
    codes = {f.code.value for f in diagnose(run).findings}
    assert "divergence" not in codes
