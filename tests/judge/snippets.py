"""Checks on fix snippets: they compile, hold no placeholders, and every ``model`` access path in them resolves
against the run's layer and parameter names (used by tests/judge/test_snippets.py and tests/judge/test_zoo.py)."""

from __future__ import annotations

import ast
import builtins
import io
import tokenize

from gradscope.judge.findings import Fix
from gradscope.store.run import Run

PSEUDO = ("→", "...", "…")
"""Placeholders that make a snippet pseudo-code, anywhere in it (comments included: a snippet is pasted whole)."""

MODULE_METHODS = {"parameters", "named_parameters", "modules", "named_modules", "children", "named_children",
                  "state_dict", "get_submodule", "get_parameter", "train", "eval"}
"""Module methods a snippet may call on ``model`` or on one of its layers."""

LAYER_ATTRS = {"weight", "bias", "in_features", "out_features", "in_channels", "out_channels", "input_size",
               "hidden_size", "num_layers", "batch_first", "bidirectional", "dropout", "embed_dim", "num_heads"}


def code_only(code: str) -> str:
    """The snippet without its comments and string literals (what could execute)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            out.append(tok.string)
    return " ".join(out)


def _chain(node: ast.expr) -> list[ast.expr] | None:
    """The attribute/subscript chain from a ``model`` Name up to ``node``, outermost last; None otherwise."""
    parts: list[ast.expr] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute | ast.Subscript):
        parts.append(cur)
        cur = cur.value
    if isinstance(cur, ast.Name) and cur.id == "model":
        return parts[::-1]
    return None


def model_paths(tree: ast.AST) -> list[tuple[list[str], ast.expr]]:
    """Every maximal ``model...`` access chain as its parts (attribute names and integer indices as strings)."""
    inner: set[int] = set()
    chains: list[tuple[list[str], ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Subscript) and id(node) not in inner:
            chain = _chain(node)
            if chain is None:
                continue
            for c in chain[:-1]:
                inner.add(id(c))
            parts: list[str] = []
            for c in chain:
                if isinstance(c, ast.Attribute):
                    parts.append(c.attr)
                else:
                    assert isinstance(c, ast.Subscript)
                    sl = c.slice
                    assert isinstance(sl, ast.Constant) and isinstance(sl.value, int) and not isinstance(
                        sl.value, bool), f"index that is not an integer literal: {ast.unparse(c)}"
                    parts.append(str(sl.value))
            chains.append((parts, node))
    # Drop chains nested in a longer one found later in the walk (ast.walk is breadth-first: outer first).
    return [(p, n) for p, n in chains if id(n) not in inner]


def unresolved(code: str, run: Run) -> list[str]:
    """``model`` access paths in ``code`` that name no layer or parameter of ``run``."""
    layers = {la.name for la in run.layers} | {""}
    params = {p.name for p in run.params} | {p for la in run.layers for p in la.params}
    tree = ast.parse(code)
    bad: list[str] = []
    for parts, node in model_paths(tree):
        # The longest prefix that is a layer, then at most a parameter/attribute/method name.
        for k in range(len(parts), -1, -1):
            prefix = ".".join(parts[:k])
            if prefix in layers:
                rest = parts[k:]
                break
        else:   # pragma: no cover - "" is always a layer
            rest = parts
            prefix = ""
        # After a parameter or attribute anything goes (tensor methods: model.fc1.weight.mul_).
        ok = not rest or (len(rest) == 1 and rest[0] in MODULE_METHODS) or rest[0] in LAYER_ATTRS \
            or any(".".join(parts[:i]) in params for i in range(k + 1, len(parts) + 1))
        if not ok:
            bad.append(ast.unparse(node))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get_submodule", "get_parameter")):
            arg = node.args[0] if node.args else None
            known = layers if node.func.attr == "get_submodule" else params
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)) or arg.value not in known:
                bad.append(ast.unparse(node))
    return bad


def _names(node: ast.AST) -> tuple[set[str], set[str], set[str]]:
    """(names read, names bound, names bound for their own statement) anywhere in ``node``; an augmented
    assignment reads its target too. The last are a loop's, a comprehension's, a lambda's, a ``with ... as``'s
    and an ``except ... as``'s names: bound before the code that reads them runs."""
    loaded, bound, local = set(), set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            loaded.add(n.target.id)
        elif isinstance(n, ast.FunctionDef | ast.ClassDef):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
            local.add(n.arg)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, ast.ExceptHandler) and n.name:
            local.add(n.name)
        targets: list[ast.expr] = []
        if isinstance(n, ast.For | ast.AsyncFor | ast.comprehension):
            targets.append(n.target)
        elif isinstance(n, ast.With | ast.AsyncWith):
            targets += [i.optional_vars for i in n.items if i.optional_vars is not None]
        for t in targets:
            local |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
    return loaded, bound, local


def free_names(code: str) -> set[str]:
    """Names a snippet reads before it defines them (builtins excluded), statement by statement; inside a
    function or class, its own parameters and locals count as defined, and so do a loop's or comprehension's
    variables inside it."""
    free: set[str] = set()
    defined = set(dir(builtins))
    for stmt in ast.parse(code).body:
        loaded, bound, local = _names(stmt)
        if isinstance(stmt, ast.FunctionDef | ast.ClassDef):
            loaded -= bound          # parameters and locals; globals it reads are defined above it
        free |= loaded - defined - local
        defined |= bound
    return free


def check_fix(fx: Fix, run: Run) -> list[str]:
    """What is wrong with one fix's snippet (empty when it is fine or has no code)."""
    if not fx.code:
        return []
    problems: list[str] = []
    try:
        compile(fx.code, "<fix>", "exec")
    except SyntaxError as e:
        return [f"{fx.kind.value}: does not compile ({e.msg}): {fx.code!r}"]
    problems += [f"{fx.kind.value}: placeholder {p!r} in {fx.code!r}" for p in PSEUDO if p in fx.code]
    problems += [f"{fx.kind.value}: unknown module path {p}" for p in unresolved(fx.code, run)]
    return problems


SNIPPET_GLOBALS = {"model", "optimizer", "nn", "torch", "F"}
"""What an executed snippet may read: the model, its optimizer, ``torch``, ``torch.nn`` and its functional."""


def runnable(code: str) -> bool:
    """The snippet can be executed against a model alone: code, no import, and it reads only
    ``SNIPPET_GLOBALS`` (no training-loop variables such as ``X_train`` or ``num_epochs``)."""
    return bool(code) and "import" not in code and not free_names(code) - SNIPPET_GLOBALS


def run_snippet(code: str, model: object, x: object, where: str = "<fix>") -> object:
    """Executes ``code`` against a deep copy of ``model`` (after one backward pass, with an SGD optimizer over it)
    and forwards ``x`` in train and eval mode; returns the model as the snippet left it. Raises what the snippet
    raises (but a snippet with an ``assert`` is a check: its own AssertionError means it found what the finding
    says), and AssertionError when the output's shape changed or became non-finite where it was finite."""
    import copy

    import torch
    from torch import nn
    from torch.nn import functional as F

    assert isinstance(model, nn.Module)
    with torch.no_grad():
        want = model.eval()(x)
    m = copy.deepcopy(model)
    m.train()
    m(x).float().sum().backward()      # as in the training loop: the gradients of one batch are there
    ns: dict[str, object] = {"model": m, "nn": nn, "torch": torch, "F": F,
                             "optimizer": torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)}
    checks = any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(code)))
    try:
        exec(compile(code, where, "exec"), ns)     # executing the snippet is the point
    except AssertionError:
        if not checks:
            raise
        # a snippet that is a check (``assert not missing``) may fire on the model it diagnoses
    m = ns["model"]
    assert isinstance(m, nn.Module), f"{where}: `model` is no longer a module"
    for mode in (True, False):
        m.train(mode)
        with torch.no_grad():
            out = m(x)
        assert out.shape == want.shape, f"{where} changed the output shape {tuple(want.shape)} → " \
                                        f"{tuple(out.shape)}:\n{code}"
        assert torch.isfinite(out).all() or not torch.isfinite(want).all(), f"{where} made the output non-finite"
    return m
