"""The report leads with root causes: a consequence is folded under the finding that explains it (text and
Markdown), says "see X" when its cause's fix is the only one, and a cause says what it explains; the JSON keeps
the judge's order and its ``caused_by``/``consequences`` keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner, Result

from gradscope.judge.causes import link
from gradscope.judge.diagnose import Diagnosis, diagnose
from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.judge.rules.loss import FirstStep
from gradscope.judge.rules.optim import LearningRateDetail
from gradscope.judge.thresholds import Thresholds
from gradscope.show.cli import main
from gradscope.show.report import Report
from gradscope.show.sections import Findings, causal_order
from gradscope.store.jsonl import LogWriter, log_path
from gradscope.store.load import load_run
from gradscope.store.schema import PARAM_FIELDS, CloseRecord, NonFiniteRecord, activations_record
from tests.logfactory import make_header, step_record, write_log


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_lr_too_high(d: Path, *, steps: int = 60, ratio: float = 0.5, nan_step: int = 50) -> None:
    """Every update is half its weight (a learning rate far too high) and the loss turns NaN at ``nan_step``:
    the judge explains the divergence by the learning rate."""
    header = make_header()
    ui = PARAM_FIELDS.index("update_ratio")
    w = LogWriter(log_path(d))
    try:
        w.write(header.to_dict())
        w.write(activations_record({la.name: la.act for la in header.layers if la.act}))
        for s in range(steps):
            rec = step_record(s, header)
            params = tuple(tuple(ratio if k == ui else v for k, v in enumerate(p)) for p in rec.params)
            w.write(dataclasses.replace(rec, params=params).to_dict())
        w.write(NonFiniteRecord(step=nan_step, where="loss").to_dict())
        w.write(CloseRecord(step=steps - 1, time=0.01 * steps).to_dict())
    finally:
        w.close()


def _line_index(lines: list[str], start: str) -> int:
    hits = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert len(hits) == 1, f"{start!r}: {hits}"
    return hits[0]


def test_the_log_really_links_the_divergence_to_the_learning_rate(tmp_path: Path) -> None:
    """The premise of the rendering tests below, from the judge itself."""
    write_lr_too_high(tmp_path)
    d = diagnose(load_run(tmp_path))
    assert [f.code for f in d.findings] == [Code.LEARNING_RATE, Code.DIVERGENCE]
    assert d.findings[1].caused_by == (Code.LEARNING_RATE,)
    assert d.findings[0].consequences == (Code.DIVERGENCE,)


def test_text_leads_with_the_cause_and_folds_the_consequence_under_it(tmp_path: Path) -> None:
    write_lr_too_high(tmp_path)
    res = cli("report", tmp_path)
    assert res.exit_code == 1, res.output          # errors found: exit 1, a report on stdout
    lines = res.stdout.splitlines()
    cause = _line_index(lines, "ERROR   learning_rate · ")
    effect = _line_index(lines, "  ↳ ERROR   divergence · ")     # indented under its cause, with an arrow
    assert cause < effect
    cause_block = "\n".join(lines[cause:effect])
    effect_block = "\n".join(lines[effect:effect + 12])
    assert "        explains: divergence" in cause_block
    assert "            caused by: learning_rate" in effect_block   # the consequence's body is indented too
    assert "fix (clipping)" in effect_block and "see learning_rate" not in effect_block   # a fix of its own
    assert res.stdout.count("fix (learning_rate)") == 1            # one learning rate, given by the cause
    assert "root cause  learning_rate (explains divergence)" in res.stdout


def test_markdown_nests_the_consequence_one_heading_level_below_its_cause(tmp_path: Path) -> None:
    write_lr_too_high(tmp_path)
    res = cli("report", tmp_path, "--format", "markdown")
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    cause = _line_index(lines, "#### ERROR · `learning_rate` — ")
    effect = _line_index(lines, "##### ↳ ERROR · `divergence` — ")
    assert cause < effect
    assert "Explains: `divergence`" in lines[cause:effect]
    assert "Caused by: `learning_rate`" in lines[effect:]
    assert res.stdout.count("- **learning_rate**:") == 1
    assert "| root cause | learning_rate (explains divergence) |" in lines


def test_json_keeps_the_judges_order_and_links(tmp_path: Path) -> None:
    write_lr_too_high(tmp_path)
    res = cli("report", tmp_path, "--format", "json")
    assert res.exit_code == 1, res.output
    findings = json.loads(res.stdout)["findings"]
    judged = diagnose(load_run(tmp_path)).findings
    assert findings == json.loads(json.dumps([f.to_dict() for f in judged]))
    lr, div = findings
    assert lr["code"] == "learning_rate" and lr["consequences"] == ["divergence"] and "caused_by" not in lr
    assert div["code"] == "divergence" and div["caused_by"] == ["learning_rate"] and "consequences" not in div


# --- hand-built links (through the judge's own ``link``) --------------------------------------------------

LR_FIX = Fix(FixKind.LEARNING_RATE, "Set the learning rate to 0.01",
             'for group in optimizer.param_groups:\n    group["lr"] = 0.01')


def _linked_diagnosis(tmp_path: Path) -> Diagnosis:
    """A divergence whose only fix is a learning rate: its cause gives it, so the consequence has none."""
    write_log(tmp_path, steps=20)
    run = load_run(tmp_path)
    lr = Finding(Code.LEARNING_RATE, Severity.WARNING, "Learning rate too high", "ratio 0.5", steps=(0, 19),
                 fixes=(LR_FIX,), evidence={"direction": "high"}, detail=LearningRateDetail(direction="high"))
    div = Finding(Code.DIVERGENCE, Severity.ERROR, "Training diverged", "NaN loss at step 12", steps=(12, 12),
                  fixes=(Fix(FixKind.LEARNING_RATE, "Lower the learning rate tenfold", "lr = 0.01"),),
                  detail=FirstStep(12))
    info = Finding(Code.UNSTABLE_LOSS, Severity.INFO, "Noisy loss", "a little noisy", steps=(1, 2))
    linked = link([div, info, lr], run, Thresholds())
    assert not linked[0].fixes and linked[0].caused_by == (Code.LEARNING_RATE,)   # the premise
    return Diagnosis(run=run, findings=tuple(linked))   # deliberately not in the judge's order


def test_a_consequence_without_fixes_points_to_its_cause(tmp_path: Path) -> None:
    rep = Report([_linked_diagnosis(tmp_path)])
    text = rep.render_text()
    lines = text.splitlines()
    cause = _line_index(lines, "ERROR   learning_rate · ")          # raised to its consequence's severity
    effect = _line_index(lines, "  ↳ ERROR   divergence · ")
    info = _line_index(lines, "INFO    unstable_loss · ")
    assert cause < effect < info            # the cause's family first, then the other root
    assert "            fix: see learning_rate (its cause)" in lines[effect:info]
    assert text.count("fix (learning_rate)") == 1
    md = rep.to_markdown().splitlines()
    m_cause = _line_index(md, "#### ERROR · `learning_rate`")
    m_effect = _line_index(md, "##### ↳ ERROR · `divergence`")
    m_info = _line_index(md, "#### INFO · `unstable_loss`")
    assert m_cause < m_effect < m_info
    assert "- **fix**: see `learning_rate` (its cause)" in md[m_effect:m_info]
    doc = json.loads(rep.to_json())
    assert [f["code"] for f in doc["findings"]] == ["learning_rate", "unstable_loss", "divergence"]
    assert doc["findings"][2]["fixes"] == []


def _f(code: Code, sev: Severity, *, caused_by: tuple[Code, ...] = (), consequences: tuple[Code, ...] = (),
       step: int = 0) -> Finding:
    return Finding(code, sev, code.value, "m", steps=(step, step), caused_by=caused_by, consequences=consequences)


def test_a_chain_reads_top_down_and_a_finding_with_two_causes_appears_once(tmp_path: Path) -> None:
    """poor_init → saturation → vanishing_gradients, and poor_init → vanishing_gradients too: vanishing is
    shown once, under the last of its causes (saturation), two levels deep."""
    init = _f(Code.POOR_INIT, Severity.ERROR, consequences=(Code.SATURATION, Code.VANISHING_GRADIENTS))
    sat = _f(Code.SATURATION, Severity.ERROR, caused_by=(Code.POOR_INIT,),
             consequences=(Code.VANISHING_GRADIENTS,), step=3)
    van = _f(Code.VANISHING_GRADIENTS, Severity.ERROR, caused_by=(Code.POOR_INIT, Code.SATURATION), step=1)
    alone = _f(Code.OVERFITTING, Severity.WARNING, step=5)
    order = causal_order([van, alone, sat, init])
    assert [(f.code, depth) for f, depth in order] == [
        (Code.POOR_INIT, 0), (Code.SATURATION, 1), (Code.VANISHING_GRADIENTS, 2), (Code.OVERFITTING, 0)]
    write_log(tmp_path, steps=10)
    rep = Report([Diagnosis(run=load_run(tmp_path), findings=(van, alone, sat, init))])
    (run,) = rep.sections().runs
    section = next(s for s in run.sections if isinstance(s, Findings))
    assert [(f.code, f.depth) for f in section.items] == [
        ("poor_init", 0), ("saturation", 1), ("vanishing_gradients", 2), ("overfitting", 0)]
    lines = rep.render_text().splitlines()
    assert _line_index(lines, "      ↳ ERROR   vanishing_gradients · ") > _line_index(lines, "  ↳ ERROR   saturation")
    assert "                caused by: poor_init, saturation" in lines
    assert "                fix: see poor_init, saturation (its causes)" in lines   # no fix of its own
    md = rep.to_markdown()
    assert "###### ↳ ERROR · `vanishing_gradients`" in md and md.count("`vanishing_gradients` —") == 1
    assert "- **fix**: see `poor_init`, `saturation` (its causes)" in md


def test_unresolved_or_cyclic_links_still_show_every_finding_once() -> None:
    """A hand-built diagnosis may name a cause that is not there, or (wrongly) link two findings both ways:
    nothing is lost, nothing repeated, and the order stays deterministic."""
    orphan = _f(Code.DIVERGENCE, Severity.ERROR, caused_by=(Code.LEARNING_RATE,))
    a = _f(Code.SATURATION, Severity.WARNING, caused_by=(Code.DEAD_RELU,), consequences=(Code.DEAD_RELU,))
    b = _f(Code.DEAD_RELU, Severity.WARNING, caused_by=(Code.SATURATION,), consequences=(Code.SATURATION,))
    order = causal_order([a, orphan, b])
    assert sorted(f.code.value for f, _ in order) == ["dead_relu", "divergence", "saturation"]
    assert order[0] == (orphan, 0)             # its cause is missing: it stands at the top
    assert [d for _, d in order[1:]] == [0, 1]


def test_runs_without_links_keep_their_layout(tmp_path: Path) -> None:
    """No link: no arrow, no "caused by"/"explains" line, no root-cause summary line."""
    write_log(tmp_path, steps=20)
    run = load_run(tmp_path)
    plain = (_f(Code.OVERFITTING, Severity.WARNING, step=4), _f(Code.UNSTABLE_LOSS, Severity.INFO, step=2))
    rep = Report([Diagnosis(run=run, findings=plain)])
    text, md = rep.render_text(), rep.to_markdown()
    for token in ("↳", "caused by", "explains", "root cause", "Caused by", "Explains"):
        assert token not in text and token not in md
    assert text.index("WARNING overfitting") < text.index("INFO    unstable_loss")
