"""Root causes: which findings explain which, from the run's own evidence (no torch).

Some findings are consequences of others: a learning rate far too high makes the loss diverge, a mis-scaled
initialization makes gradients vanish through the stack, raw inputs saturate the first layer. ``LINKS`` lists
each such relation with the condition under which it holds *for this run* (a direction, a shared layer, an
order in time), never mere co-occurrence. ``link(findings, run, thresholds)`` then:

- names the causes in each consequence (``caused_by``) and the consequences in each cause (``consequences``);
- raises a cause to the severity of the worst finding it explains (a consequence never outranks its cause,
  and the run's worst severity is unchanged);
- drops from a consequence the fixes of a kind one of its causes already offers: the cause's fix is the one
  to apply, and two learning-rate fixes with different values would contradict each other; and the kinds a
  link says contradict its cause (``Link.dropped``: no "widen the model" for an underfit another finding
  explains, no "train longer" after a spike threw the progress away); a consequence that
  is only an artefact of its cause (``Link.artefact``: the chance-level error of a model whose weights are NaN)
  keeps none of its own.

Consequences keep their code and stay warnings or errors: ``--fail-on``, the zoo's verdicts and ``--ignore``
work as before. Links are between warning/error findings only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from gradscope.judge.findings import Code, Finding, Fix, FixKind, Severity
from gradscope.judge.rules._common import early_count, finite_series, nanmedian, safe_div, stat, tail_slice
from gradscope.judge.rules.gradients import ExplodingDetail
from gradscope.judge.rules.loss import FirstStep
from gradscope.judge.rules.optim import LearningRateDetail, LrInitStep, LrSpike, LrStepUp, spike_fix, step_up_fix
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run

Condition = Callable[[Finding, Finding, Run, Thresholds], bool]


@dataclass(frozen=True)
class Link:
    """``cause`` explains ``effect`` on a run when ``when(cause_finding, effect_finding, run, thresholds)``.
    ``artefact``: the effect is only an artefact of the cause (a NaN model's chance-level error), so none of its
    own fixes apply — the cause's do."""

    cause: Code
    effect: Code
    when: Condition
    why: str
    artefact: bool = False
    drops: frozenset[FixKind] = frozenset()

    @property
    def dropped(self) -> frozenset[FixKind]:
        """Fix kinds the effect must not offer under this cause. An underfit that another finding explains is
        not a capacity problem: "widen the model" under a learning rate far too low, a spike or vanishing
        gradients sends the user the wrong way (issue 11), so ``capacity`` is always dropped there."""
        extra = frozenset({FixKind.CAPACITY}) if self.effect is Code.UNDERFITTING else frozenset()
        return self.drops | extra


def _direction(f: Finding) -> object:
    """"high" or "low" for a learning_rate finding (its typed detail, else its evidence)."""
    return f.detail.direction if isinstance(f.detail, LearningRateDetail) else f.evidence.get("direction")


def _lr(direction: str) -> Condition:
    def when(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
        return _direction(c) == direction
    return when


def _shares_layer(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    return bool(set(c.layers) & set(e.layers))


def _first_step(f: Finding) -> int | None:
    if isinstance(f.detail, ExplodingDetail | FirstStep):
        s = f.detail.first_step if isinstance(f.detail, ExplodingDetail) else f.detail.step
        if s is not None:
            return s
    return f.steps[0] if f.steps else None


def _before(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    a, b = _first_step(c), _first_step(e)
    return a is not None and b is not None and a <= b


def _init_shows_in_depth(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The init changed the signal through depth from the first steps, or it mis-scaled a layer the
    consequence names."""
    return "early_activation_depth_ratio" in c.evidence or _shares_layer(c, e, run, th)


def _alive_early_then_dead(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The dead layer was alive once its dead window first filled: the units died during training (large
    updates), not at init (a negative bias, a zero init)."""
    dead, units = stat(run, "layer", "dead"), stat(run, "layer", "units")
    if dead is None or units is None or not e.layers or run.header is None:
        return False
    names = [la.name for la in run.layers]
    if e.layers[0] not in names:
        return False
    i = names.index(e.layers[0])
    start = max(run.header.dead_window - 1, 0)
    rows = np.arange(start, min(dead.shape[0], start + early_count(max(dead.shape[0] - start, 1), th)))
    if rows.size == 0:
        return False
    early = float(nanmedian(safe_div(dead[rows, i], units[rows, i])))
    return bool(np.isfinite(early) and early < th.dead_fraction)


def _first_layer(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The consequence names the layer that reads the raw input."""
    return bool(c.layers) and c.layers[0] in e.layers


def _spike(f: Finding) -> LrSpike | None:
    return f.detail.spike if isinstance(f.detail, LearningRateDetail) else None


def _step_up(f: Finding) -> LrStepUp | None:
    return f.detail.step_up if isinstance(f.detail, LearningRateDetail) else None


def _init_step(f: Finding) -> LrInitStep | None:
    return f.detail.init_step if isinstance(f.detail, LearningRateDetail) else None


def _schedule_change(f: Finding) -> tuple[int, int, int] | None:
    """(last recorded step before, first step of, last step of) the spike or lasting step up the learning_rate
    finding names, or None."""
    s, u = _spike(f), _step_up(f)
    if s is not None:
        return s.before, s.first, s.last
    if u is not None:
        return u.before, u.step, u.last
    return None


def _after_spike(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The learning rate spiked (or stepped up for good) in the recorded schedule, and the consequence began after
    the last recorded step at the rate before it: the run was fine at that rate, then the higher rate threw it
    off."""
    ch, first = _schedule_change(c), _first_step(e)
    return ch is not None and first is not None and first > ch[0]


def _ended_above_before(c: Finding, run: Run, th: Thresholds, keys: tuple[str, ...]) -> bool:
    """One of the logged losses ``keys`` was lower just before the spike or step up of ``c`` (median of its last
    ``early_min_steps`` values before it) than at the end of the run (median of the last ``tail_fraction`` of
    the values after it); False when ``c`` names no schedule change."""
    ch = _schedule_change(c)
    if ch is None:
        return False
    _, first, last = ch
    for key in keys:
        st, v = finite_series(run.metrics.get(key))
        pre, post = v[st < first][-th.early_min_steps:], v[st > (last if _spike(c) is not None else first - 1)]
        if pre.size and post.size and float(np.median(pre)) < float(np.median(post[tail_slice(post.size, th)])):
            return True
    return False


def _spike_undid_progress(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The spike (or step up) undid the training: the training or validation loss ends above where it was just
    before it (``_ended_above_before``)."""
    return _ended_above_before(c, run, th, ("train_loss", "val_loss"))


def _spike_broke_validation(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The train/validation gap opened at the rate change, not by gradual memorization: the validation loss
    ends above where it was just before the spike or step up (``_ended_above_before``)."""
    return _ended_above_before(c, run, th, ("val_loss",))


def _at_peak_of_large_steps(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The learning rate was judged too high because an Adam-like optimizer's steps are large against the
    weights' initial scale, and the consequence began once the rate had reached its peak (after any warm-up):
    Adam's step is set by the learning rate, not by the gradient's scale, so the large steps came first."""
    init, first = _init_step(c), _first_step(e)
    return init is not None and first is not None and first >= init.peak_step


def _underfit_from_thrown_weights(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """A rate judged too high because the weights grew ``lr_weight_growth``× or more, and a training loss that
    never got going (the underfitting finding judged from a flat loss curve near chance): weights thrown that
    far keep the model from settling, so widening it would not help first."""
    growth = c.evidence.get("weight_growth") if isinstance(c.evidence, dict) else None
    return (_direction(c) == "high" and isinstance(growth, int | float) and growth >= th.lr_weight_growth
            and "train_loss_end" in e.evidence)


def _underfit_from_large_steps(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The learning-rate finding took the underfitting as its evidence: Adam-like steps large against the
    weights' scale keep rewriting them, so the model never settles into a fit."""
    init = _init_step(c)
    return init is not None and Code.UNDERFITTING in init.damage


def _nonfinite_before_end(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The run went NaN/Inf (not a finite runaway) before its last logged loss: a model whose weights are NaN
    predicts one class whatever the input, so its error is chance-level because of the NaN."""
    first = _first_step(c)
    if first is None or "events" not in c.evidence:     # only a NaN/Inf divergence lists its events
        return False
    last = [int(np.max(s.steps)) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "train_error",
                                              "val_error") if (s := run.metrics.get(k)) is not None and len(s)]
    return bool(last) and first <= max(last)


def _reference_not_updated(c: Finding, e: Finding, run: Run, th: Thresholds) -> bool:
    """The vanishing test compares against a layer the optimizer does not hold: ``optimizer.zero_grad()`` never
    clears that layer's gradient, so it piles up step after step and every other layer looks small next to it."""
    ref = e.evidence.get("last_layer")
    return isinstance(ref, str) and ref in c.layers


LINKS: tuple[Link, ...] = (
    Link(Code.LEARNING_RATE, Code.DIVERGENCE, _lr("high"),
         "steps far too large for the loss surface overshoot until numbers overflow"),
    Link(Code.LEARNING_RATE, Code.UNSTABLE_LOSS, _lr("high"), "steps that overshoot make the loss spike"),
    # Not learning_rate → exploding_gradients: both are read from the same update and gradient sizes, and in
    # recurrent nets or with an unscaled target the gradients explode whatever the step; naming one the cause
    # of the other would guess.
    Link(Code.LEARNING_RATE, Code.DEAD_RELU, lambda c, e, r, t: _lr("high")(c, e, r, t)
         and _alive_early_then_dead(c, e, r, t),
         "a large update pushes a unit's pre-activation negative for every input, where it gets no gradient"),
    Link(Code.LEARNING_RATE, Code.UNDERFITTING, _lr("low"), "steps too small to fit in the time trained",
         drops=frozenset({FixKind.LEARNING_RATE, FixKind.TRAIN_LONGER})),
    # A spike or a lasting step up in the recorded schedule gives the order in time the general case lacks: the
    # run was fine at the base rate, and what broke began with the higher rate.
    Link(Code.LEARNING_RATE, Code.EXPLODING_GRADIENTS, _after_spike,
         "steps at many times the base rate throw the weights out of range, and the gradients with them"),
    Link(Code.LEARNING_RATE, Code.VANISHING_GRADIENTS, _after_spike,
         "the large updates at the higher rate kill or saturate units, and no gradient passes them afterwards"),
    Link(Code.LEARNING_RATE, Code.SATURATION, _after_spike,
         "the large updates at the higher rate push pre-activations into the flat tails"),
    Link(Code.LEARNING_RATE, Code.UNDERFITTING, _spike_undid_progress,
         "the higher rate threw away the progress made before it: the loss ends above where it was before",
         drops=frozenset({FixKind.TRAIN_LONGER})),
    Link(Code.LEARNING_RATE, Code.OVERFITTING, _spike_broke_validation,
         "the higher rate knocked the model out of the fit it had: the validation loss ends above where it was "
         "before, the gap is not memorization", drops=frozenset({FixKind.REGULARIZATION, FixKind.DATA,
                                                                FixKind.CAPACITY})),
    # Adam-like steps set by a learning rate large against the weights' initial scale: the step size is the
    # optimizer's setting, not a reading of the gradients, so it comes first (unlike the general case above).
    Link(Code.LEARNING_RATE, Code.EXPLODING_GRADIENTS, _at_peak_of_large_steps,
         "steps many times the typical size against the weights' scale throw them, and the activations and "
         "gradients with them, out of range"),
    Link(Code.LEARNING_RATE, Code.UNDERFITTING, _underfit_from_thrown_weights,
         "updates large enough to grow the weights that much keep the loss from settling: it stays near chance"),
    Link(Code.LEARNING_RATE, Code.UNDERFITTING, _underfit_from_large_steps,
         "steps that large keep rewriting the weights, so the model never settles into a fit"),
    Link(Code.DIVERGENCE, Code.UNDERFITTING, _nonfinite_before_end,
         "a model whose weights turned NaN predicts one class whatever the input", artefact=True),
    Link(Code.EXPLODING_GRADIENTS, Code.DIVERGENCE, _before,
         "gradients that kept growing overflow to NaN/Inf"),
    Link(Code.POOR_INIT, Code.VANISHING_GRADIENTS, _init_shows_in_depth,
         "a per-layer gain below one compounds with depth from the first step"),
    Link(Code.POOR_INIT, Code.EXPLODING_GRADIENTS, _init_shows_in_depth,
         "a per-layer gain above one compounds with depth from the first step"),
    Link(Code.POOR_INIT, Code.SATURATION, _shares_layer, "weights too large put pre-activations in the flat tails"),
    Link(Code.POOR_INIT, Code.DEAD_RELU, _shares_layer, "weights that start equal (or mis-scaled) leave units "
         "that never fire"),
    Link(Code.SATURATION, Code.VANISHING_GRADIENTS, _shares_layer,
         "a saturated unit passes almost no gradient to the layers below it"),
    Link(Code.UNNORMALIZED_INPUT, Code.SATURATION, _first_layer,
         "a raw input's scale puts the first layer's pre-activations in the flat tails"),
    Link(Code.UNNORMALIZED_INPUT, Code.DEAD_RELU, _first_layer,
         "an offset input pushes the first layer's pre-activations to one side"),
    Link(Code.PARAM_NOT_UPDATED, Code.VANISHING_GRADIENTS, _reference_not_updated,
         "a layer outside the optimizer is never zeroed: its gradient piles up and dwarfs the others'"),
    Link(Code.PROBABILITIES_AS_LOGITS, Code.LEARNING_RATE, _lr("low"),
         "the second softmax squashes the gradient, so the updates look too small for the learning rate"),
    Link(Code.PROBABILITIES_AS_LOGITS, Code.UNDERFITTING, lambda c, e, r, t: True,
         "cross-entropy on probabilities has a floor, so the training loss and error stay high"),
    Link(Code.PROBABILITIES_AS_LOGITS, Code.LR_PLATEAU, lambda c, e, r, t: True,
         "the loss levels off at the floor of cross-entropy on probabilities, which no schedule lowers"),
)
"""Every cause → consequence relation gradscope knows, with the condition that makes it hold on a run."""


def _loud(f: Finding) -> bool:
    return f.severity is not Severity.INFO


_BACKS_OFF = (Code.DIVERGENCE, Code.EXPLODING_GRADIENTS, Code.DEAD_RELU, Code.SATURATION, Code.UNSTABLE_LOSS)
"""Codes whose learning-rate fix lowers the rate by ``fix_lr_backoff``, a rule of thumb."""


def _one_learning_rate(findings: list[Finding]) -> list[Finding]:
    """When the learning rate is judged too high, every finding that also says "lower the learning rate" gives
    the learning_rate finding's value (derived from the measured update/weight ratios) instead of its own rule
    of thumb: a report never asks for two different learning rates. When the schedule spiked or stepped up for
    good, that is the schedule fix (the base rate was fine): no finding asks to lower the base rate."""
    source = next((f for f in findings if f.code is Code.LEARNING_RATE and _loud(f) and _direction(f) == "high"
                   and f.fixes and f.fixes[0].kind is FixKind.LEARNING_RATE and f.fixes[0].code), None)
    if source is None:
        return findings
    lr = source.fixes[0]
    spike, up = _spike(source), _step_up(source)
    same = (spike_fix(spike) if spike is not None else step_up_fix(up) if up is not None else
            Fix(FixKind.LEARNING_RATE, f"{lr.summary} (the learning_rate finding's value, so that the report "
                                       f"gives one)", lr.code))
    return [replace(f, fixes=tuple(same if fx.kind is FixKind.LEARNING_RATE else fx for fx in f.fixes))
            if f.code in _BACKS_OFF else f for f in findings]


def link(findings: list[Finding], run: Run, th: Thresholds) -> list[Finding]:
    """The findings with ``caused_by``/``consequences`` set, causes raised to their worst consequence's
    severity and consequences' fixes that a cause already offers (same kind) dropped; learning-rate fixes
    agree on one value (``_one_learning_rate``)."""
    findings = _one_learning_rate(findings)
    edges: set[tuple[int, int]] = set()
    artefacts: set[int] = set()
    dropped: dict[int, set[FixKind]] = {}
    for li in LINKS:
        for i, c in enumerate(findings):
            if c.code is not li.cause or not _loud(c):
                continue
            for j, e in enumerate(findings):
                if i != j and e.code is li.effect and _loud(e) and li.when(c, e, run, th):
                    edges.add((i, j))
                    dropped.setdefault(j, set()).update(li.dropped)
                    if li.artefact:
                        artefacts.add(j)
    if not edges:
        return findings
    causes = {j: {i for i, jj in edges if jj == j} for j in range(len(findings))}
    effects = {i: {j for ii, j in edges if ii == i} for i in range(len(findings))}

    def closure(start: int, graph: dict[int, set[int]]) -> set[int]:
        seen: set[int] = set()
        todo = list(graph[start])
        while todo:
            k = todo.pop()
            if k not in seen:
                seen.add(k)
                todo += graph[k]
        return seen

    out: list[Finding] = []
    for k, f in enumerate(findings):
        below = closure(k, effects)
        above = closure(k, causes)
        severity = max([f.severity, *(findings[j].severity for j in below)], key=lambda s: s.rank)
        taken = {fx.kind for a in above for fx in findings[a].fixes} | dropped.get(k, set())
        fixes = tuple(fx for fx in f.fixes if fx.kind not in taken) if above else f.fixes
        if k in artefacts:
            fixes = ()
        out.append(replace(f, severity=severity, fixes=fixes,
                           caused_by=tuple(dict.fromkeys(findings[i].code for i in sorted(causes[k]))),
                           consequences=tuple(dict.fromkeys(findings[j].code for j in sorted(effects[k])))))
    return out
