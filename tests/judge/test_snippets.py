"""Fix snippets are real Python for the run's model: they compile, hold no placeholders, name only layers the
run has, and a crafted log (hostile layer names, types, activations, optimizer) cannot put code into them."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from gradscope.judge.diagnose import diagnose
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.judge.rules import RULES
from gradscope.judge.rules._common import is_plain_path, module_path
from gradscope.judge.rules.data import InputDetail
from gradscope.judge.rules.fitting import BestEvaluation
from gradscope.judge.rules.gradients import ExplodingDetail, VanishingDetail
from gradscope.judge.rules.init import PoorInitDetail
from gradscope.judge.rules.loss import FirstStep
from gradscope.judge.rules.optim import LearningRateDetail
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load
from gradscope.store.run import Run
from tests.judge.snippets import check_fix, code_only, free_names, unresolved
from tests.logfactory import make_header, overfit_metrics, write_log
from tests.rulecases import L, healthy_run, mlp

TH = Thresholds()

SHAPES = {
    "mlp": mlp((20, 64, 64, 10)),
    "tanh": mlp((20, 64, 64, 64, 10), act="tanh"),
    "sequential": mlp((20, 32, 32, 3), names=["net.0", "net.2", "net.4"]),
    "cnn": [L("features.0", 27, 144, "relu", type="Conv2d", units=16),
            L("features.3", 144, 288, "relu", type="Conv2d", units=32), L("classifier", 512, 10, None)],
}

DETAILS = {
    Code.VANISHING_GRADIENTS: VanishingDetail(("sigmoid", "tanh")),
    Code.EXPLODING_GRADIENTS: ExplodingDetail(first_step=5, through_depth=True),
    Code.DIVERGENCE: FirstStep(5), Code.UNSTABLE_LOSS: FirstStep(5),
    Code.OVERFITTING: BestEvaluation(step=40, index=4, count=10, val_loss=0.5),
    Code.UNNORMALIZED_INPUT: InputDetail(mean=120.0, std=70.0),
    Code.LEARNING_RATE: LearningRateDetail(direction="low", ratio=1e-6, target=1e-3, factor=1e3),
}


def all_fixes(run: Run) -> list[tuple[Code, Fix]]:
    """Every rule's fixes for a finding that names all of the run's layers (with and without a typed detail),
    whether or not the rule would fire: every snippet builder runs."""
    names = tuple(la.name for la in run.layers)
    out = []
    for code, rule in RULES.items():
        for detail in (DETAILS.get(code), None):
            f = Finding(code, Severity.WARNING, "t", "m", layers=names, steps=(0, 10), detail=detail)
            if code is Code.POOR_INIT:
                f = dataclasses.replace(f, detail=PoorInitDetail({n: "tanh" for n in names}))
            out += [(code, fx) for fx in rule.fixes(f, run, TH) if fx is not None]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_every_snippet_compiles_and_names_real_layers(shape: str) -> None:
    run = healthy_run(SHAPES[shape], n=20)
    fixes = all_fixes(run)
    assert len([fx for _, fx in fixes if fx.code]) >= 15
    problems = [f"{code.value}: {p}" for code, fx in fixes for p in check_fix(fx, run)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_bad_snippets() -> None:
    run = healthy_run(SHAPES["mlp"], n=20)
    assert unresolved("nn.init.zeros_(model.fc9.bias)", run) == ["model.fc9.bias"]
    assert unresolved("model.get_submodule('fc9')", run)
    assert unresolved("model.fc1.weight.mul_(2)", run) == []   # a tensor method after a parameter is fine
    assert check_fix(Fix(FixKind.CAPACITY, "s", "# fc1: 64 → 128"), run)
    assert check_fix(Fix(FixKind.DATA, "s", "transforms.Compose([...])"), run)
    assert check_fix(Fix(FixKind.DATA, "s", "if x:\n    break"), run)    # compiles only inside a loop
    assert free_names("best = 0\n\ndef f(v):\n    global best\n    return v < best and model") == {"model"}


@pytest.mark.parametrize(("name", "path"), [
    ("fc1", "model.fc1"), ("net.0", "model.net[0]"), ("blocks.01", "model.get_submodule('blocks.01')"),
    ("class", "model.get_submodule('class')"), ("ﬁlter", "model.get_submodule('ﬁlter')"),
    ("a\nimport os", "model.get_submodule('a\\nimport os')"), ("x²", "model.get_submodule('x²')"),
])
def test_module_path_quotes_anything_that_is_not_a_plain_path(name: str, path: str) -> None:
    assert module_path(name) == path
    assert is_plain_path(name) == (not path.startswith("model.get_submodule"))
    ast.parse(path, mode="eval")


HOSTILE_LAYERS = (
    ("fc1'); __import__('os').system('echo pwned'); ('", "Linear", 20, 64, "relu"),
    ("enc.0.lin\nimport os; os.system('id')", "Linear'); os.system('t1", 64, 64, "tanh'); os.system('a1"),
    ("class", 'Conv2d"); os.system("t2") #', 64, 64, "sigmoid"),
    ("ﬁlter", "Linear", 64, 64, "relu"),
    ("blocks.01", "Linear", 64, 64, "tanh"),
    ("head", "Linear", 64, 3, None),
)

ALLOWED_CALL_ROOTS = {"nn", "torch", "model", "optimizer", "next", "list", "isinstance", "setattr", "float",
                      "super", "self", "Residual", "OnOutput", "X_train", "transforms", "parent", "min"}


def _call_root(func: ast.expr) -> str:
    while True:
        if isinstance(func, ast.Call):
            func = func.func
        elif isinstance(func, ast.Attribute | ast.Subscript):
            func = func.value
        else:
            break
    return func.id if isinstance(func, ast.Name) else ast.unparse(func)


def _hostile_run(tmp_path: Path) -> Run:
    header = make_header(HOSTILE_LAYERS)
    header = dataclasses.replace(header, optimizer={"type": "os.system('opt')", "lr": 0.1, "weight_decay": 0.0})
    write_log(tmp_path, steps=120, header=header, metrics=overfit_metrics())
    return load(tmp_path, warn=False)[0]


def test_hostile_layer_names_never_become_code(tmp_path: Path) -> None:
    run = _hostile_run(tmp_path)
    fixes = [fx for _, fx in all_fixes(run)] + [fx for f in diagnose(run).findings for fx in f.fixes]
    coded = [fx for fx in fixes if fx.code]
    assert len(coded) >= 15
    for fx in coded:
        tree = ast.parse(fx.code)          # parses
        compile(tree, "<fix>", "exec")
        live = code_only(fx.code)          # what could execute: no comments, no string literals
        for bad in ("system", "__import__", "pwned", "os", "eval", "exec", "getattr"):
            assert not re.search(rf"\b{bad}\b", live), f"{bad!r} outside a string or comment in {fx.code!r}"
        roots = {_call_root(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert roots <= ALLOWED_CALL_ROOTS, f"unexpected call {roots - ALLOWED_CALL_ROOTS} in {fx.code!r}"
        assert not unresolved(fx.code, run), fx.code
    # The hostile names are still named, as string literals.
    assert any("model.get_submodule(" in fx.code or "model.get_parameter(" in fx.code for fx in coded)
