"""The guard (issues 9.1, 13.1): a failure inside gradscope never reaches the training loop.

Each case makes one internal function raise in a real training run, then checks what the user would see:
losses and weights bit-identical to an unwatched twin, exactly one ``GradscopeWarning``, every hook removed at
close, no TorchFunctionMode left behind, and a ``problem`` record in the log naming what was turned off.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning
from gradscope.measure import assemble, checks, clock, tb_writer, tracer, updates
from gradscope.measure import watch as watch_module
from gradscope.measure.guard import Guard, Part, describe, problem_record
from gradscope.store import jsonl
from gradscope.store.jsonl import read_log
from tests.measure.test_watch import _hook_count

STEPS = 9


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer) -> list[float]:
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x, y = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    model = _model()
    torch.manual_seed(7)
    losses = _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _failing(real: Callable[..., Any], after: int) -> Callable[..., Any]:
    """``real``, except that every call after the first ``after`` raises."""
    calls = [0]

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    return fake


# (what to break, how many calls succeed first, the Part it turns off)
CASES: list[tuple[Any, str, int, Part | None]] = [
    (assemble, "accumulate_output", 3, Part.LAYERS),
    (assemble, "layer_row", 2, Part.LAYERS),
    (checks, "probe", 2, Part.FINITE),
    (checks.ScalerTracker, "unscale", 3, Part.GRADIENTS),
    (watch_module, "norms", 3, None),   # gradient norms and clipping detection share it: two parts, two warnings
    (watch_module, "input_stats", 1, Part.INPUT),
    (updates.UpdateSampler, "snapshot", 1, Part.UPDATES),
    (watch_module, "activations_record", 0, Part.ACTIVATIONS),
    (tracer.ActivationTracer, "_note", 0, Part.ACTIVATIONS),   # inside the user's forward: kept, reported after
    (tb_writer.TensorBoardMirror, "step", 1, Part.TENSORBOARD),
    (clock.StepClock, "_begin_step", 3, Part.WATCH),
    (watch_module.Watch, "_record", 2, Part.WATCH),
]


@pytest.mark.parametrize("owner,name,after,part", CASES, ids=[f"{c[1]}-{c[3].value if c[3] else 'two'}" for c in CASES])
def test_an_internal_failure_turns_one_part_off_and_training_is_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, after: int, part: Part | None
) -> None:
    want_losses, want_state = _reference()
    monkeypatch.setattr(owner, name, _failing(getattr(owner, name), after))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, tmp_path, every=2, optimizer=opt, tensorboard=part is Part.TENSORBOARD):
            losses = _train(model, opt)
    assert losses == want_losses                                # bit-identical, not approximately
    for k, v in model.state_dict().items():
        assert torch.equal(v, want_state[k]), k
    ours = [str(w.message) for w in caught if issubclass(w.category, GradscopeWarning)]
    parts = [part] if part is not None else [Part.CLIPPING, Part.GRADIENTS]
    assert len(ours) == len(parts), ours                        # one warning per part turned off
    assert all("internal error" in m and "injected failure" in m for m in ours)
    assert _hook_count(model, opt) == 0
    assert torch._C._len_torch_function_stack() == 0            # no tracer mode left on the stack

    records = [json.loads(line) for line in jsonl.log_path(tmp_path).read_text().splitlines()]
    problems = [r for r in records if r["kind"] == "problem"]
    assert [p["where"] for p in problems] == [p.value for p in parts]
    assert all(set(p) == {"kind", "step", "where", "error"} for p in problems)
    assert all(p["error"] == "RuntimeError: injected failure" for p in problems)
    assert records[-1]["kind"] == "close"
    log = read_log(jsonl.log_path(tmp_path), warn=False)          # today's reader: the problem is one line
    assert any("injected failure" in p for p in log.problems)
    if part is not None and part.everything:
        assert len(log.steps) < STEPS // 2 + 1                  # nothing recorded after the failure
    else:
        assert [r.step for r in log.steps] == [0, 1, 2, 3, 4, 6, 8]   # every other part kept recording


def test_a_failing_log_turns_gradscope_off_without_a_problem_record(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    want_losses, _ = _reference()
    real = jsonl.LogWriter.write
    calls = [0]

    def write(self: jsonl.LogWriter, record: dict[str, Any]) -> None:
        calls[0] += 1
        if calls[0] > 4:
            raise ValueError("injected failure")
        real(self, record)

    monkeypatch.setattr(jsonl.LogWriter, "write", write)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(7)
    with pytest.warns(GradscopeWarning, match="internal error in the gradscope log") as caught, \
            gradscope.watch(model, tmp_path, every=1, optimizer=opt, tensorboard=False):
        losses = _train(model, opt)
    assert losses == want_losses
    assert len([w for w in caught if issubclass(w.category, GradscopeWarning)]) == 1
    assert _hook_count(model, opt) == 0
    lines = jsonl.log_path(tmp_path).read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(ln)["kind"] != "problem" for ln in lines)


def test_close_and_log_never_raise_for_an_internal_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    scope = gradscope.watch(model, tmp_path, every=1, tensorboard=False)
    F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
    monkeypatch.setattr(watch_module.Watch, "_record", _failing(watch_module.Watch._record, 0))
    with pytest.warns(GradscopeWarning, match="internal error"):
        scope.close()                       # the open step's record fails inside close()
    assert scope.closed and _hook_count(model) == 0
    assert json.loads(jsonl.log_path(tmp_path).read_text().splitlines()[-1])["kind"] == "close"


def test_a_user_error_is_still_raised(tmp_path: Path) -> None:
    """The guard is for gradscope's own failures: a wrong argument is the user's to see."""
    with gradscope.watch(_model(), tmp_path, tensorboard=False) as scope, pytest.raises(ValueError, match="step"):
        scope.log(step=-1, train_loss=1.0)


def test_guard_unit() -> None:
    written: list[dict[str, Any]] = []
    stopped: list[bool] = []
    guard = Guard(written.append, lambda: 3, lambda: stopped.append(True), "LOG")
    assert guard.run(Part.LAYERS, lambda x: x + 1, 1) == 2
    with pytest.warns(GradscopeWarning, match=r"internal error in layer statistics at step 3 \(KeyError: 'k'\)"):
        assert guard.run(Part.LAYERS, lambda: {}["k"]) is None
    assert not guard.on(Part.LAYERS) and guard.on(Part.UPDATES) and not stopped
    assert guard.run(Part.LAYERS, lambda: 1) is None         # off: not called again, no second warning
    assert written == [{"kind": "problem", "step": 3, "where": "layers", "error": "KeyError: 'k'"}]
    with pytest.warns(GradscopeWarning, match="gradscope turned off"):
        guard.run(Part.WATCH, lambda: 1 / 0)
    assert stopped == [True] and guard.everything_off and not guard.on(Part.UPDATES)
    fresh = Guard(written.append, lambda: 0, lambda: None, "LOG")
    with pytest.raises(UserWarning):   # a warning the user made an error (-W error) is theirs to see
        fresh.run(Part.UPDATES, _raise_warning)
    assert problem_record(-1, Part.LOG, OSError("disk full"))["step"] is None
    assert describe(ValueError("bad \ud800\nsecond line")) == "ValueError: bad \\ud800"


def _raise_warning() -> None:
    raise UserWarning("made an error with -W error")
