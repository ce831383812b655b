"""One registry entry per code: the rule and its fixes in the same family module, with declared needs."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import gradscope.judge.rules as rules_pkg
from gradscope.judge.findings import Code
from gradscope.judge.rules import RULES
from gradscope.judge.thresholds import Thresholds
from tests.rulecases import healthy_run, metrics_only_run

RULES_DIR = Path(rules_pkg.__file__).parent


def test_rule_and_fixes_live_in_the_family_module() -> None:
    for code, rule in RULES.items():
        mod = inspect.getmodule(rule.func)
        assert mod is not None and mod is inspect.getmodule(rule.fixes), code
        assert mod.__name__ == f"gradscope.judge.rules.{Path(mod.__file__ or '').stem}"
        assert rule in mod.RULES, f"{code.value} is registered by its own family module"


def test_no_bare_tuning_constants_outside_thresholds() -> None:
    """Fix constants are Thresholds fields: no module-level numeric constant in the rule families (the old
    LR_BACKOFF, DROPOUT_P, ... sat outside Thresholds)."""
    constants = {"_MAD_TO_SIGMA"}   # a property of the normal distribution, not a knob
    for path in RULES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                value = node.value.value
                assert not isinstance(value, int | float) or isinstance(value, bool) or names <= constants, \
                    f"{path.name}: module-level number {ast.unparse(node)}"
    for name in ("fix_lr_backoff", "fix_weight_decay_sgd", "fix_weight_decay_adamw", "fix_dropout_p",
                 "fix_width_factor", "fix_max_layers"):
        assert name in Thresholds.docs()


def test_needs_give_uniform_not_evaluated_reasons() -> None:
    """A TensorBoard-only run: every rule that needs the log says the same thing."""
    from gradscope.judge.diagnose import diagnose
    from gradscope.judge.rules._common import LOG, NO_LOG

    d = diagnose(metrics_only_run({}))
    reasons = {n.code: n.reason for n in d.not_evaluated}
    needing_log = [c for c, r in RULES.items() if LOG in r.needs]
    assert len(needing_log) >= 6
    assert all(reasons[c] == NO_LOG for c in needing_log)
    for code, rule in RULES.items():
        assert rule.needs, f"{code.value} declares what it needs"
        assert all(n.what for n in rule.needs)
        assert rule.missing(healthy_run(), Thresholds()) is None or code in (Code.OVERFITTING,
                                                                             Code.UNDERFITTING), code
