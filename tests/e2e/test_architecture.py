"""The layout is the architecture: measure/ → store/ → judge/ → show/ (docs/architecture.md).

These tests read the source (AST), so a violation fails here before it shows up as a slow import, a torch
dependency of ``gradscope report``, or a training process that loads the rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "gradscope"
READ_SIDE = ("store", "judge", "show")


def _modules(room: str) -> list[Path]:
    return sorted((PKG / room).rglob("*.py"))


def _imports(path: Path, *, module_level_only: bool) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``path``; ``module_level_only`` skips imports inside
    functions and ``if TYPE_CHECKING:`` blocks (which never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level_only:
                    visit(child, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                if not module_level_only:
                    visit(child, top)
                continue
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.extend((child.lineno, f"{child.module}.{a.name}") for a in child.names)
            visit(child, top)

    visit(tree, True)
    return out


def _offenders(rooms: tuple[str, ...], banned: tuple[str, ...], *, module_level_only: bool) -> list[str]:
    bad = []
    for room in rooms:
        for path in _modules(room):
            for line, name in _imports(path, module_level_only=module_level_only):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_read_side_never_imports_torch() -> None:
    """store/, judge/ and show/ run where the log is copied, on machines without torch."""
    assert not _offenders(READ_SIDE, ("torch",), module_level_only=False)


def test_measure_never_imports_the_read_side_at_module_level() -> None:
    """The write side may call the judge lazily (the TensorBoard report panel at close), never at import."""
    banned = ("gradscope.judge", "gradscope.show", "rich")
    assert not _offenders(("measure",), banned, module_level_only=True)


def test_store_and_judge_never_import_show() -> None:
    """Arrows point one way: the renderers read the judge's findings, never the reverse."""
    assert not _offenders(("store", "judge"), ("gradscope.show", "rich", "click"), module_level_only=True)
    assert not _offenders(("store",), ("gradscope.judge",), module_level_only=True)


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    """The AST walk itself can fail: an import inside a function is seen when asked for, skipped when not."""
    p = tmp_path / "m.py"
    p.write_text("import os\ndef f():\n    import torch\nif TYPE_CHECKING:\n    import rich\n")
    assert [n for _, n in _imports(p, module_level_only=True)] == ["os"]
    assert [n for _, n in _imports(p, module_level_only=False)] == ["os", "torch", "rich"]


_TRAIN_ONLY = """
import sys
import torch
import gradscope
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scope = gradscope.watch(model, logdir=sys.argv[1], every=1)
for _ in range(3):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,))).backward()
    opt.step()
    scope.log(train_loss=0.5)
loaded = sorted(m for m in sys.modules if m == "rich" or m.startswith(
    ("rich.", "gradscope.judge.rules", "gradscope.judge.diagnose", "gradscope.show")))
print(",".join(loaded))
scope.close()
"""


def test_a_training_process_loads_neither_rich_nor_the_rules(tmp_path: Path) -> None:
    """``gradscope.watch`` in a training loop imports the write side only (the public names are lazy). The
    TensorBoard mirror reads three numbers from ``judge.thresholds`` (a dataclass, no rules) for its clipping
    chart, and loads the rules once, at ``close()``, to write the report panel."""
    out = subprocess.run([sys.executable, "-c", _TRAIN_ONLY, str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"loaded during training: {out.stdout.strip()}"


def test_import_gradscope_is_cheap() -> None:
    """``import gradscope`` alone imports no submodule at all."""
    code = "import sys, gradscope; print(sorted(m for m in sys.modules if m.startswith('gradscope.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['gradscope._version']"


def test_every_public_name_resolves() -> None:
    import gradscope

    for name in gradscope.__all__:
        assert getattr(gradscope, name) is not None
    assert callable(gradscope.report) and callable(gradscope.diagnose) and callable(gradscope.watch)
    with pytest.raises(AttributeError):
        gradscope.no_such_name  # noqa: B018


def test_no_product_file_cites_a_path_outside_the_repository() -> None:
    bad = [str(p.relative_to(ROOT)) for p in [*PKG.rglob("*.py"), *(ROOT / "docs").rglob("*.md")]
           if "shared/" in p.read_text(encoding="utf-8") or "PERF-NOTES" in p.read_text(encoding="utf-8")]
    assert not bad


def test_every_declared_dependency_is_imported() -> None:
    """No declared dependency stays unused (pyproject names → import names)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    source = "\n".join(p.read_text(encoding="utf-8") for p in PKG.rglob("*.py"))
    for name in names:
        module = {"tensorboard": "torch.utils.tensorboard"}.get(name, name)
        assert f"import {module}" in source or f"from {module}" in source, f"{name} is declared but never imported"


def test_one_number_helper_of_each_kind() -> None:
    """``gradscope/_numbers.py`` holds the one finite-or-None test and the one number format; a second copy
    drifts (two helpers once printed the same NaN as ``nan`` and ``–``). ``store.validate.finite`` is another
    job: it refuses a bad record instead of mapping it to None."""
    dupes = {"finite", "_finite", "finite_or_none", "_is_finite", "fmt_num", "_fmt_num", "fmt_pct"}
    allowed = {("_numbers.py", n) for n in ("finite", "fmt_num", "fmt_pct")} | {("validate.py", "finite")}
    found = [(str(p.relative_to(PKG)), n.name) for p in PKG.rglob("*.py")
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(n, ast.FunctionDef) and n.name in dupes and (p.name, n.name) not in allowed]
    assert not found, found
