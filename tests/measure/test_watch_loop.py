"""The training loop's own habits (issue 12 groundwork, measure side): a loop that trains in eval mode still has
its steps counted, and a loop that never zeroes its gradients is seen — both without a tensor op, written as
``loop`` records, which the reader checks and hands to the rules as ``Run.loop``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.load import load_run


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))


def _loops(logdir: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, log_path(logdir).read_text().splitlines()) if r["kind"] == "loop"]


def _merged(loops: list[dict[str, Any]], key: str) -> list[int]:
    return [s for r in loops for s in r[key]]


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_a_loop_that_trains_in_eval_mode_is_counted_and_flagged(tmp_path: Path,
                                                                 with_optimizer: bool) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()                                   # forgotten: model.train()
    with gradscope.watch(model, tmp_path, every=2, tensorboard=False,
                         optimizer=opt if with_optimizer else None) as scope:
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
        assert scope.step == 5
    log = read_log(log_path(tmp_path))   # no problem (pytest makes a warning an error)
    assert [r.step for r in log.steps] == [0, 1, 2, 3, 4]
    assert all(r.grad_norm is not None and r.grad_norm > 0 for r in log.steps)
    loops = _loops(tmp_path)
    assert _merged(loops, "eval_steps") == list(range(6))
    assert sum(r["eval_forwards"] for r in loops) == sum(r["forwards"] for r in loops) == 6
    assert [(r["from_step"], r["step"]) for r in loops] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]


def test_eval_passes_without_backward_change_nothing(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(4):
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
            model.eval()
            model(torch.randn(8, 4))               # validation without no_grad: still not a step
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2, 3]
    assert all(r.layers[0][0] == 8 * 16 for r in log.steps)   # the validation pass is not in the statistics
    loops = _loops(tmp_path)
    assert _merged(loops, "eval_steps") == [] and sum(r["forwards"] for r in loops) == 4


def _train(model: nn.Module, logdir: Path, zero: str, steps: int = 5) -> list[dict[str, Any]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, logdir, every=1, tensorboard=False, optimizer=opt):
        for _ in range(steps):
            if zero == "none":
                opt.zero_grad()
            elif zero == "zeros":
                opt.zero_grad(set_to_none=False)
            elif zero == "after_forward":
                out = model(torch.randn(8, 4))
                opt.zero_grad()
                F.cross_entropy(out, torch.randint(0, 3, (8,))).backward()
                opt.step()
                continue
            loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
            if zero == "l2":
                opt.zero_grad()
                loss = loss + 1e-3 * sum(p.pow(2).sum() for p in model.parameters())
            if zero == "accumulate":
                opt.zero_grad()
                loss.backward()
                loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
            loss.backward()
            opt.step()
    return _loops(logdir)


@pytest.mark.parametrize("zero", ["none", "zeros", "after_forward", "l2", "accumulate"])
def test_zeroed_gradients_are_never_called_stale(tmp_path: Path, zero: str) -> None:
    loops = _train(_model(), tmp_path, zero)
    assert _merged(loops, "stale_grad_steps") == []
    assert sum(r["grad_checks"] for r in loops) == 4          # every backward that followed an optimizer step


def test_a_loop_without_zero_grad_is_seen(tmp_path: Path) -> None:
    loops = _train(_model(), tmp_path, "never")
    assert _merged(loops, "stale_grad_steps") == [1, 2, 3, 4]   # step 0 had nothing to zero


def test_the_reader_hands_the_loop_facts_to_the_run(tmp_path: Path) -> None:
    _train(_model(), tmp_path, "never")
    run = load_run(tmp_path)   # no problem: pytest makes a warning an error
    assert not run.problems
    assert run.loop.records == 5 and run.loop.n_steps == 5
    assert run.loop.stale_grad_steps.tolist() == [1, 2, 3, 4] and int(run.loop.grad_checks.sum()) == 4
    assert run.loop.eval_steps.tolist() == [] and int(run.loop.forwards.sum()) == 5
    assert run.header is not None and run.header.extra["mode_modules"] == {"Dropout": 1}


def test_the_header_counts_modules_that_differ_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Dropout(0.0), nn.Flatten(), nn.Linear(12, 2),
                          nn.BatchNorm1d(2, track_running_stats=False))
    with gradscope.watch(model, tmp_path, tensorboard=False):
        model(torch.randn(4, 2, 5)).sum().backward()
    header = json.loads(log_path(tmp_path).read_text().splitlines()[0])
    assert header["extra"]["mode_modules"] == {"BatchNorm1d": 1}   # p=0 dropout and stat-less BN act the same


def test_forwards_in_train_mode_without_grad_are_counted_not_stepped(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x_val = torch.randn(8, 4)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(3):
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
            with torch.no_grad():                  # validation, model.eval() forgotten: two batches
                model(torch.randn(8, 4))
                model(torch.randn(8, 4))
            with torch.inference_mode():           # Monte Carlo dropout: one batch sampled 4 times
                for _ in range(4):
                    model(x_val)
            model.eval()
            with torch.no_grad():                  # a correct validation pass: not counted
                model(torch.randn(8, 4))
    log = read_log(log_path(tmp_path))
    assert [r.step for r in log.steps] == [0, 1, 2]
    assert all(r.layers[0][0] == 8 * 16 for r in log.steps)   # no no-grad pass in the statistics
    loops = _loops(tmp_path)
    assert sum(r["train_nograd_forwards"] for r in loops) == 3 * 6
    assert sum(r["train_nograd_repeats"] for r in loops) == 3 * 3   # the 2nd..4th sample of each MC batch
    assert sum(r["forwards"] for r in loops) == 3
    run = load_run(tmp_path)
    assert int(run.loop.train_nograd_forwards.sum()) == 18 and int(run.loop.train_nograd_repeats.sum()) == 9


def test_the_same_validation_tensor_every_epoch_is_no_repeat(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x_val = torch.randn(8, 4)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
            with torch.no_grad():
                model(x_val)                       # train mode, but a training step since the last one
    loops = _loops(tmp_path)
    assert sum(r["train_nograd_forwards"] for r in loops) == 3
    assert sum(r["train_nograd_repeats"] for r in loops) == 0
    assert loops[-1]["from_step"] == loops[-1]["step"] + 1   # the last pass came after the last step


# ---------------------------------------------------------------------------- model output: probabilities or not

def _train_output(tmp_path: Path, head: nn.Module | None, out: int = 3, steps: int = 6) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, out)]
    if head is not None:
        layers.append(head)
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, tmp_path, every=3, warmup=1, tensorboard=False, optimizer=opt):
        for _ in range(steps):
            opt.zero_grad()
            y = model(torch.randn(8, 4))
            (F.cross_entropy(y, torch.randint(0, out, (8,))) if out > 1 else y.mean()).backward()
            opt.step()
    return _loops(tmp_path)


def test_a_softmax_output_is_measured_on_recorded_steps_only(tmp_path: Path) -> None:
    loops = _train_output(tmp_path, nn.Softmax(dim=1))
    measured = [r for r in loops if "output_cols" in r]
    assert [r["step"] for r in measured] == [0, 3]   # the recorded steps (warmup 1, every 3); not the close record
    for r in measured:
        assert r["output_cols"] == 3 and r["output_min"] >= 0.0
        assert abs(r["output_sum_lo"] - 1.0) < 1e-6 and abs(r["output_sum_hi"] - 1.0) < 1e-6
    lp = load_run(tmp_path, warn=False).loop
    assert lp.output_cols.tolist() == [3, 3, 0] and not load_run(tmp_path, warn=False).problems


def test_logits_and_one_column_outputs(tmp_path: Path) -> None:
    loops = _train_output(tmp_path / "logits", None)
    r = next(r for r in loops if "output_cols" in r)
    assert r["output_min"] < 0 and r["output_cols"] == 3
    one = _train_output(tmp_path / "one", nn.Sigmoid(), out=1)
    assert not any("output_cols" in r for r in one)   # a sigmoid/BCE output is never a distribution over classes
