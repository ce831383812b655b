"""Training-loop rules: bugs in how the loop wires the model to the optimizer and the loss, judged from data
every log already has (per-parameter gradient norms and update ratios, the recorded learning rate, the logged
loss).

- ``param_not_updated``: a parameter gets gradients but the optimizer never moves it (it is not in the
  optimizer: a layer added or replaced after the optimizer was built, a wrong ``parameters()`` call).
- ``no_gradient``: a layer runs in the training forward pass but its trainable parameters never get a gradient
  (it is off the loss path: ``.detach()``, ``.data``, a branch the loss never uses).
- ``lr_plateau``: the loss stopped improving while the learning rate stayed where it was (no schedule).

And from the ``loop`` records the watch writes (``Run.loop``: how the loop itself behaved, counted on the host):

- ``grad_not_zeroed``: ``optimizer.zero_grad()`` is missing; every backward adds to the gradients of all the
  steps before.
- ``eval_mode_training``: the model trains in eval mode (``model.eval()`` left on after validation), so dropout is
  off and batch norm normalizes with its running statistics.
- ``train_mode_eval``: validation runs under ``torch.no_grad()`` with the model still in train mode (dropout on,
  batch norm on batch statistics, its running statistics updated with validation data).
- ``probabilities_as_logits``: the model outputs probabilities (a final softmax) and the loss is
  ``nn.CrossEntropyLoss``, which applies a softmax again: gradients shrink and the loss has a floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.judge.confidence import confidence, fraction_margin, mean, support
from gradscope.judge.findings import Code, Finding, Fix, FixKind, NotEvaluated, Severity
from gradscope.judge.rules._common import (
    LOG,
    STEPS,
    Context,
    Need,
    Rule,
    RuleResult,
    finite_series,
    fmt_num,
    fmt_steps,
    label,
    layer_stat,
    module_path,
    nanmedian,
    param_stat,
    pct,
    stat,
    step_range,
)
from gradscope.judge.rules._fixes import left_out, list_names, sig
from gradscope.judge.rules._layers import layer_info, param_expr
from gradscope.judge.rules.fitting import error_series
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run

# ------------------------------------------------------------------------------------------------ helpers


def _lr_matrix(run: Run) -> np.ndarray | None:
    """(S, G) recorded learning rate per recorded step and param group (NaN where missing), or None when the
    log has none (``watch`` without ``optimizer=``)."""
    if not run.lr or len(run.lr) != run.steps.size or not any(run.lr):
        return None
    g = max(len(r) for r in run.lr)
    out = np.full((len(run.lr), g), np.nan)
    for i, r in enumerate(run.lr):
        for j, v in enumerate(r):
            if v is not None and math.isfinite(v):
                out[i, j] = v
    return out


def _owner_groups(run: Run, cols: list[int]) -> list[tuple[str, list[int]]]:
    """The parameters ``cols`` grouped by the layer that owns them (in header order; a parameter no watched
    layer owns stands alone under its own name)."""
    groups: dict[str, list[int]] = {}
    for j in cols:
        p = run.params[j]
        groups.setdefault(p.layer if p.layer is not None else p.name, []).append(j)
    return list(groups.items())


def _is_layer(run: Run, name: str) -> bool:
    return any(la.name == name for la in run.layers)


def _param_paths(run: Run, names: list[str], th: Thresholds) -> list[str]:
    """``model.<layer>.parameters()`` for layers, ``[model.get_parameter('...')]`` for lone parameters: what an
    optimizer or a freeze call takes. At most ``fix_max_code_layers``."""
    out = []
    for n in names[:th.fix_max_code_layers]:
        if _is_layer(run, n):
            out.append(f"{module_path(n)}.parameters()")
        else:
            out.append(f"[model.get_parameter({n!r})]")
    return out


# ---------------------------------------------------------------------------------------- param_not_updated

@dataclass(frozen=True)
class NotUpdatedDetail:
    """What ``param_not_updated`` hands its fixes: the owners (layers, or lone parameters) never updated."""

    owners: tuple[str, ...] = ()


def param_not_updated(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Parameters that get gradients but never change: they are not in the optimizer.

    Symptom: part of the model keeps its initial weights (a new head after fine-tuning set-up stays random); the
    loss still falls, more slowly, because the other layers work around it.

    Detected when a trainable parameter's update/weight ratio ||Δw||/||w|| is exactly 0 on every judged step
    while its gradient norm is positive and at least one other parameter moved on the same step (so the optimizer
    did step), on at least ``not_updated_min_steps`` steps; a step counts only when the update the parameter
    would have had — the other parameters' median ||Δw||/||g|| on that step times its own ||g||/||w|| — is at
    least ``not_updated_min_expected`` (a gradient so small that its update rounds to nothing, as under vanishing
    gradients, explains a zero update by itself). Judged steps leave out steps an AMP GradScaler
    skipped and, when the learning rate is recorded (``watch(..., optimizer=)``), steps where any param group's
    learning rate is 0 (a zero-lr warm-up step, a group frozen by lr 0: gradscope does not know which group
    holds which parameter). Without a recorded learning rate the first ``not_updated_skip_steps`` recorded steps
    are left out instead (a warm-up gradscope cannot see) and the rest must all be 0. Frozen parameters
    (``requires_grad=False``) are not watched at all; parameters of embedding layers are not judged (their
    update is measured on a fixed sample of rows, which a sparse update may never touch). A parameter updated
    by something else than the watched optimizer step outside the watched step (a second optimizer stepped
    before the forward pass) would look the same.

    Confidence: n / (n + ``not_updated_min_steps``) for n judged steps (½ at the minimum, → 1 with more steps),
    × ``confidence_no_lr_factor`` without a recorded learning rate.

    Why it matters: the optimizer only steps the parameters it was given. A layer added or replaced after
    ``torch.optim.X(model.parameters())`` was built, or an optimizer built from the wrong ``parameters()`` call,
    leaves those weights at their initial values for the whole run, silently (bf16 weights whose every update
    rounds to zero look the same and deserve the same attention).

    Fixes: build the optimizer after the model is complete; or add the missing parameters to the existing
    optimizer with ``optimizer.add_param_group``.
    """
    code = Code.PARAM_NOT_UPDATED
    ur, gn = stat(run, "param", "update_ratio"), stat(run, "param", "grad_norm")
    if ur is None or gn is None:
        return []
    s = ur.shape[0]
    judged = np.ones(s, dtype=bool)
    if run.skipped.shape[0] == s:
        judged &= ~run.skipped
    lr = _lr_matrix(run)
    if lr is not None:
        with np.errstate(invalid="ignore"):
            judged &= np.all(np.isfinite(lr) & (lr > 0), axis=1)
    else:
        judged[:th.not_updated_skip_steps] = False
    emb = {la.name for la in run.layers if "embedding" in la.type.lower()}
    with np.errstate(invalid="ignore"):
        moved = np.isfinite(ur) & (ur > 0)
        still = np.isfinite(ur) & (ur == 0)
        grad = np.isfinite(gn) & (gn > 0)
    n_moved = moved.sum(axis=1)
    # Candidates: parameters with a measured update on some judged step that never moved on any (in one pass).
    measured = (judged[:, None] & np.isfinite(ur)).any(axis=0)
    ever_moved = (judged[:, None] & moved).any(axis=0)
    cands = [j for j in np.flatnonzero(measured & ~ever_moved) if run.params[j].layer not in emb]
    if not cands:
        return []
    # The step each parameter would have taken were it in the optimizer: the other parameters' effective step
    # size ||Δw|| / ||g|| on the same step (the learning rate, for SGD) times its own ||g|| / ||w||. A gradient so
    # small that this rounds to nothing in float32 (vanishing gradients) explains a zero update by itself.
    wn = stat(run, "param", "norm")
    step_size = np.full(s, np.inf)
    need = judged & still[:, cands].any(axis=1)      # only the steps that can be evidence
    if wn is not None and need.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            eff = np.where(moved[need] & grad[need], ur[need] * wn[need] / gn[need], np.nan)
            step_size[need] = np.asarray(nanmedian(eff, axis=1))
    hits: list[int] = []
    counts: dict[int, int] = {}
    for j in cands:
        others = (n_moved - moved[:, j]) > 0      # the optimizer stepped some other parameter
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = step_size * gn[:, j] / wn[:, j] if wn is not None else step_size
        expected = np.where(np.isfinite(expected), expected, np.inf)
        ev = judged & still[:, j] & grad[:, j] & others & (expected >= th.not_updated_min_expected)
        n = int(ev.sum())
        if n >= th.not_updated_min_steps:
            hits.append(int(j))
            counts[int(j)] = n
    if not hits:
        return []
    groups = _owner_groups(run, hits)
    owners = [name for name, _ in groups]
    n_min = min(counts.values())
    ev_rows = judged & np.any(still[:, hits] & grad[:, hits], axis=1)
    steps = step_range(run.steps[ev_rows])
    med_grad = {run.params[j].name: float(np.nanmedian(gn[ev_rows, j])) for j in hits}
    total = int(sum(run.params[j].numel for j in hits))
    lr_txt = ("; learning rate above 0 on every judged step" if lr is not None
              else f"; learning rate not recorded, first {th.not_updated_skip_steps} recorded step(s) left out")
    names = ", ".join(label(o) for o in owners[:th.fix_max_layers])
    more = f" (and {len(owners) - th.fix_max_layers} more)" if len(owners) > th.fix_max_layers else ""
    msg = (f"{names}{more}: {len(hits)} parameter(s) ({total:,} weights) got a gradient (median norm "
           f"{fmt_num(float(np.median(list(med_grad.values()))))}) but never changed on {n_min}+ judged "
           f"step(s) ({fmt_steps(steps)}, update/weight ratio exactly 0 while other parameters moved){lr_txt}: "
           f"they are not in the optimizer")
    evidence = {"params": [run.params[j].name for j in hits], "owners": owners,
                "judged_steps": {run.params[j].name: counts[j] for j in hits}, "median_grad_norm": med_grad,
                "numel": total, "lr_recorded": lr is not None, "threshold_steps": th.not_updated_min_steps}
    conf = n_min / (n_min + th.not_updated_min_steps) * (1.0 if lr is not None else th.confidence_no_lr_factor)
    layers = tuple(o for o in owners if _is_layer(run, o))
    return [Finding(code, Severity.WARNING, "Parameters never updated (not in the optimizer)", msg, layers=layers,
                    steps=steps, evidence=evidence, confidence=conf, detail=NotUpdatedDetail(tuple(owners)))]


def param_not_updated_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, NotUpdatedDetail) else NotUpdatedDetail(
        tuple(f.evidence.get("owners") or f.layers))
    owners = list(d.owners)
    fixes: list[Fix | None] = [Fix(
        FixKind.TRAINING_LOOP,
        "Build the optimizer after the model is complete (after adding or replacing layers), so it holds every "
        "parameter",
        "# create the optimizer only once the model is final (after any layer is added or replaced);\n"
        "# this re-creates it with the same class and settings over every parameter (its state starts fresh):\n"
        "optimizer = optimizer.__class__(model.parameters(), **optimizer.defaults)")]
    paths = _param_paths(run, owners, th)
    if paths:
        lines = ["# parameters hash by identity: a set of the ones the optimizer already holds",
                 "held = {p for group in optimizer.param_groups for p in group[\"params\"]}",
                 "missing = []"]
        for expr in paths:
            lines.append(f"missing += [p for p in {expr} if p not in held]")
        lines += left_out(owners, th)
        lines.append("optimizer.add_param_group({\"params\": missing})")
        fixes.append(Fix(FixKind.TRAINING_LOOP,
                         f"Add {list_names(owners, th)} to the existing optimizer (keeps its state; the new group "
                         f"takes the optimizer's default settings)", "\n".join(lines)))
    return fixes


# -------------------------------------------------------------------------------------------------- no_gradient

@dataclass(frozen=True)
class NoGradientDetail:
    """What ``no_gradient`` hands its fixes: the layers off the loss path."""

    layers: tuple[str, ...] = ()


def no_gradient(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """A layer that runs in the training forward pass but never gets a gradient: it is off the loss path.

    Symptom: the layer's weights never train; its output may still feed the model (detached) or nothing at all
    (a branch the loss never uses), and the loss falls only as far as the rest of the model can take it.

    Detected when a watched layer ran in the training forward pass (its ``calls`` > 0) on at least
    ``no_gradient_min_steps`` recorded steps, and on every one of them none of its trainable parameters had a
    gradient (missing, or exactly 0) and no gradient reached its output (the output-gradient norm was never
    recorded), while the gradients of other layers were. A layer whose output gradient is recorded but zero is
    not this rule's (dead or saturated units still sit on the loss path). Steps an AMP GradScaler skipped are
    left out. Not flagged: modules that never run in a training forward (used only at inference), frozen
    parameters (``requires_grad=False``: not watched), and layers whose weights change anyway (an EMA/momentum
    encoder updated by hand; also, a blind spot, weight decay shrinking a cut-off layer whose gradients are
    zeroed with ``zero_grad(set_to_none=False)``).

    Confidence: n / (n + ``no_gradient_min_steps``) for n recorded steps on which the layer ran.

    Why it matters: ``.detach()``, ``.data`` or a branch the loss never reads cut the layer out of
    backpropagation, so it keeps its random initial weights while still costing compute (and optimizer memory);
    if it is meant to be fixed, freezing it says so and saves both.

    Fixes: remove the ``.detach()`` / ``.data`` on the path from the layer to the loss (or use the branch in
    the loss); or freeze the layer on purpose with ``requires_grad_(False)``.
    """
    code = Code.NO_GRADIENT
    gn, ur = stat(run, "param", "grad_norm"), stat(run, "param", "update_ratio")
    calls, lg = stat(run, "layer", "calls"), stat(run, "layer", "grad_norm")
    if gn is None or calls is None:
        return []
    if not np.isfinite(calls).any():
        return NotEvaluated(code, "the log has no per-layer 'calls' statistics: which layers ran is unknown")
    s = run.steps.size
    keep = ~run.skipped if run.skipped.shape[0] == s else np.ones(s, dtype=bool)
    pidx = {p.name: j for j, p in enumerate(run.params)}
    with np.errstate(invalid="ignore"):
        has_grad = np.isfinite(gn) & (gn > 0)
        ran = np.isfinite(calls) & (calls > 0)
        out_grad = np.isfinite(lg) if lg is not None else np.zeros_like(ran)
    with np.errstate(invalid="ignore"):
        moved = np.isfinite(ur) & (ur > 0) if ur is not None else np.zeros_like(has_grad)
    n_grad = has_grad.sum(axis=1)          # parameters with a gradient, per step
    hits: list[tuple[str, int, list[int]]] = []
    for i, la in enumerate(run.layers):
        cols = [pidx[n] for n in la.params if n in pidx]
        if not cols:
            continue       # no trainable parameter (all frozen): nothing to say
        rows = keep & ran[:, i]
        n = int(rows.sum())
        if n < th.no_gradient_min_steps:
            continue
        own = has_grad[:, cols].sum(axis=1)
        if own[rows].any() or out_grad[rows, i].any():
            continue
        if not (n_grad[rows] - own[rows] > 0).any():
            continue       # nothing got a gradient: a loop that never calls backward, not this layer's wiring
        if moved[:, cols][rows].any():
            continue       # its weights change without a gradient: updated by hand (EMA), on purpose
        hits.append((la.name, n, cols))
    if not hits:
        return []
    names = [h[0] for h in hits]
    n_min = min(h[1] for h in hits)
    rows_any = keep & ran[:, [run.layer_index(nm) for nm in names]].any(axis=1)
    steps = step_range(run.steps[rows_any])
    numel = int(sum(run.params[j].numel for h in hits for j in h[2]))
    more = f" (and {len(names) - th.fix_max_layers} more)" if len(names) > th.fix_max_layers else ""
    msg = (f"{', '.join(label(n) for n in names[:th.fix_max_layers])}{more} ran in the training forward pass on "
           f"{n_min}+ recorded step(s) ({fmt_steps(steps)}) but never got a gradient ({numel:,} trainable weights; "
           f"no gradient reached its output either, while other layers' did): it is off the loss path")
    evidence = {"layers": names, "steps_ran": {h[0]: h[1] for h in hits},
                "params": [run.params[j].name for h in hits for j in h[2]], "numel": numel,
                "threshold_steps": th.no_gradient_min_steps}
    return [Finding(code, Severity.WARNING, "Layer gets no gradient (off the loss path)", msg, layers=tuple(names),
                    steps=steps, evidence=evidence, confidence=n_min / (n_min + th.no_gradient_min_steps),
                    detail=NoGradientDetail(tuple(names)))]


def no_gradient_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, NoGradientDetail) else NoGradientDetail(f.layers)
    names = [n for n in d.layers if _is_layer(run, n)]
    if not names:
        return []
    where = ", ".join(repr(n) for n in names[:th.fix_max_code_layers])
    fixes: list[Fix | None] = [Fix(
        FixKind.TRAINING_LOOP,
        f"Put {list_names(names, th)} back on the loss path: remove the .detach() / .data between its output and "
        f"the loss (or use the branch in the loss)",
        f"# in forward(), for the output of {where}:\n"
        "#   h = layer(x).detach()   ->   h = layer(x)\n"
        "#   h = layer(x).data       ->   h = layer(x)\n"
        "# then check, right after one loss.backward(), that every trainable parameter got a gradient:\n"
        "missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]\n"
        "assert not missing, f\"no gradient reaches {missing}\"")]
    lines = []
    for n in names[:th.fix_max_code_layers]:
        la = layer_info(run, n)
        if la is None:
            continue
        prefix = f"{la.name}." if la.name else ""
        for pname in la.params:
            # model.fc1.weight, or model.get_parameter('...') for a name that is not a plain access path
            expr = param_expr(run, la, pname[len(prefix):]) if pname.startswith(prefix) else None
            lines.append(f"{expr or f'model.get_parameter({pname!r})'}.requires_grad_(False)")
    if not lines:
        return fixes
    lines += left_out(names, th)
    fixes.append(Fix(FixKind.TRAINING_LOOP,
                     f"If {list_names(names, th)} is meant to stay fixed, freeze it on purpose (before building the "
                     f"optimizer and attaching gradscope)", "\n".join(lines)))
    return fixes


# -------------------------------------------------------------------------------------------------- lr_plateau

def _loss_curve(run: Run, th: Thresholds) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(metric name, steps, values) of the loss the plateau is judged on: ``train_loss``, else ``val_loss``, when
    it has at least ``plateau_min_points`` finite values."""
    for key in ("train_loss", "val_loss"):
        st, v = finite_series(run.metrics.get(key))
        if v.size >= th.plateau_min_points:
            return key, st, v
    return None


def _no_loss_curve(run: Run, th: Thresholds) -> str | None:
    if _loss_curve(run, th) is None:
        return (f"no logged train_loss or val_loss with at least {th.plateau_min_points} values "
                f"(scope.log(train_loss=...))")
    return None


def _no_lr(run: Run, th: Thresholds) -> str | None:
    if _lr_matrix(run) is None:
        return "the learning rate is not recorded: pass the optimizer, gradscope.watch(model, optimizer=opt)"
    return None


LOSS_CURVE = Need("a logged ``train_loss`` or ``val_loss`` (``plateau_min_points`` values or more)", _no_loss_curve)
RECORDED_LR = Need("the learning rate recorded per step (``watch(..., optimizer=)``)", _no_lr)


@dataclass(frozen=True)
class PlateauDetail:
    """What ``lr_plateau`` hands its fixes: the learning rate, the evaluations the loss was flat for, the
    steps between evaluations and the run's length in steps."""

    lr: float | None = None
    flat_points: int = 0
    eval_every: int = 1
    n_steps: int = 0
    metric: str = "train_loss"


def lr_plateau(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """The loss stopped improving while the learning rate never changed: a schedule would take it further.

    Symptom: the training (or validation) loss fell, then went flat for the last part of the run at a level well
    above zero, with one learning rate throughout.

    Detected when ``train_loss`` (else ``val_loss``) is flat over its last ``plateau_window`` of logged values (at least
    ``plateau_min_points``; a longer window is first averaged into at most ``plateau_max_points`` consecutive
    means): the Theil–Sen slope and its ``plateau_confidence`` confidence interval (``scipy.stats.theilslopes``),
    times the window's length in steps and relative to the window's median loss, say how much the loss changed
    over the window. It is flat when the interval does not show a significant improvement (its upper end is not
    below 0: a loss that still falls significantly, however slowly, is still improving) and the estimate is
    within ± ``plateau_flat_improvement`` (a loss that bounces by more, either way, is not called flat). Also
    required: the loss fell by at least ``plateau_earlier_drop`` from its first logged value to the window's
    median (it stopped improving; a loss stuck from the start is another problem); the recorded learning rate of
    every param group is the same on every recorded step of the window (at least one of them above 0) and was
    never higher before it (no decay happened; a warm-up is fine); and the run has not converged: the last
    training error (``train_error`` or 1 − ``train_acc``) is above ``plateau_converged_error``, or, without one,
    the window's loss is above ``plateau_converged_loss`` × its first value.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the flatness 1 − |estimated change| /
    ``plateau_flat_improvement`` and the precision 1 − (the interval's width, as a change over the window) /
    (2 × ``plateau_flat_improvement``): near 1 for a long loss curve flat to the last digit (a narrow interval),
    the floor for a short or noisy one at the edge of the band.

    Why it matters: at a constant learning rate SGD-like optimizers settle where the step's noise balances the
    descent; lowering the learning rate once progress stops (step decay, ``ReduceLROnPlateau``, cosine) is
    the standard remedy and usually gives an immediate drop.

    Fixes: ``ReduceLROnPlateau`` with a patience taken from the run; or a cosine schedule over the run's steps.
    """
    from scipy.stats import theilslopes  # imported here: only this rule needs scipy

    code = Code.LR_PLATEAU
    curve = _loss_curve(run, th)
    lr = _lr_matrix(run)
    if curve is None or lr is None:   # the needs say why
        return []
    metric, st, v = curve
    n = v.size
    k = max(th.plateau_min_points, math.ceil(n * th.plateau_window))
    if k >= n:
        return []        # no earlier part to have improved from
    ws, wv = st[n - k:].astype(float), v[n - k:]
    steps = (int(st[n - k]), int(st[-1]))
    span = float(ws[-1] - ws[0])
    level = float(np.median(wv))
    start = float(v[0])
    if k > th.plateau_max_points:
        # Means of consecutive chunks: Theil–Sen's pairwise slopes grow with the square of the points.
        chunks = np.array_split(np.arange(k), th.plateau_max_points)
        ws = np.array([ws[c].mean() for c in chunks])
        wv = np.array([wv[c].mean() for c in chunks])
    if not (span > 0 and level > 0 and start > 0):
        return []
    drop = 1.0 - level / start
    if drop < th.plateau_earlier_drop:
        return []
    slope, _, lo, hi = theilslopes(wv, ws, th.plateau_confidence)
    change = -float(slope) * span / level       # how much the loss improved over the window (Theil–Sen)
    steepest = -float(lo) * span / level        # the most it can have improved, at the interval's steep end
    if hi < 0 or abs(change) >= th.plateau_flat_improvement:
        return []       # still improving (significantly, however slowly), or moving too much to be flat
    # The learning rate over the window: constant, and never higher before (nothing decayed it).
    in_win = (run.steps >= steps[0]) & (run.steps <= steps[1])
    if not in_win.any():
        return []
    win_lr = lr[in_win]
    first = win_lr[0]
    # Constant in every group; a group held at 0 all along (frozen by its learning rate) does not count.
    if not (np.all(np.isfinite(win_lr)) and np.all(win_lr == first[None, :]) and np.any(first > 0)):
        return []
    before = lr[run.steps < steps[0]]
    if before.size and np.any(np.nan_to_num(before, nan=0.0) > first[None, :] * (1 + 1e-9)):
        return []
    tr = error_series(run, "train")
    if tr is not None:
        err = float(tr[1][-1])
        if err <= th.plateau_converged_error:
            return []
        conv_txt = f"train error {pct(err)} (a converged run is at {pct(th.plateau_converged_error)} or less)"
    else:
        err = None
        if level <= th.plateau_converged_loss * start:
            return []
        conv_txt = (f"the loss is {pct(level / start)} of its start (a converged run is at "
                    f"{pct(th.plateau_converged_loss)} or less)")
    lr0 = float(first[first > 0][0])
    groups = f" ({first.size} param groups)" if first.size > 1 else ""
    msg = (f"{metric} flat at {fmt_num(level)} over its last {k} logged values ({fmt_steps(steps)}): it moved by "
           f"{-change * 100:+.1f}% (Theil–Sen; flat within ±{pct(th.plateau_flat_improvement)} and no significant "
           f"improvement at {pct(th.plateau_confidence)} confidence) after falling "
           f"{pct(drop)} from {fmt_num(start)}; learning rate {fmt_num(lr0)}{groups} unchanged all along; "
           f"{conv_txt}")
    every = int(np.median(np.diff(st))) if n > 1 else 1
    evidence = {"metric": metric, "window_steps": list(steps), "window_points": k, "level": level, "start": start,
                "drop": drop, "improvement": change, "max_improvement": steepest, "ci_slope": [float(lo), float(hi)],
                "lr": [float(x) for x in first], "train_error": err, "threshold": th.plateau_flat_improvement,
                "confidence_level": th.plateau_confidence}
    width = (float(hi) - float(lo)) * span / level        # the interval's width, as a change over the window
    conf = confidence(mean(1.0 - abs(change) / th.plateau_flat_improvement,
                           1.0 - width / (2.0 * th.plateau_flat_improvement)), th.confidence_floor)
    detail = PlateauDetail(lr=lr0, flat_points=k, eval_every=max(1, every), n_steps=run.n_steps, metric=metric)
    return [Finding(code, Severity.WARNING, "Loss plateau at a constant learning rate", msg, steps=steps,
                    evidence=evidence, confidence=conf, detail=detail)]


def lr_plateau_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    d = f.detail if isinstance(f.detail, PlateauDetail) else PlateauDetail(n_steps=run.n_steps)
    patience = max(1, int(d.flat_points * th.plateau_patience_fraction))
    factor = sig(th.fix_lr_backoff)
    var = "val_loss" if d.metric == "val_loss" else "train_loss"
    every = "every step" if d.eval_every == 1 else f"every {d.eval_every} steps"
    fixes: list[Fix | None] = [Fix(
        FixKind.LEARNING_RATE,
        f"Multiply the learning rate by {factor} whenever the loss stalls for {patience} evaluations "
        f"(ReduceLROnPlateau; the loss here was flat for {d.flat_points})",
        f"scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=\"min\", factor={factor}, "
        f"patience={patience})\n"
        f"# after each evaluation ({every} in this run), with the loss you log:\n"
        f"#     scheduler.step({var})")]
    if d.n_steps > 0:
        fixes.append(Fix(
            FixKind.LEARNING_RATE,
            f"Or decay the learning rate over the run with a cosine schedule ({d.n_steps} optimizer steps here)",
            f"scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={d.n_steps})\n"
            "# call scheduler.step() after every optimizer.step()"))
    return fixes


# ----------------------------------------------------------------------------------- the loop's own habits

def _no_loop_records(run: Run, th: Thresholds) -> str | None:
    if run.loop.records == 0 or run.loop.n_steps == 0:
        return "the log has no loop records (written by gradscope since issue 12's loop checks)"
    if run.loop.n_steps < th.loop_min_steps:
        return f"the loop records cover {run.loop.n_steps} step(s); needs {th.loop_min_steps}"
    return None


LOOP_RECORDS = Need("``loop`` records covering at least ``loop_min_steps`` steps", _no_loop_records)


def _no_grad_checks(run: Run, th: Thresholds) -> str | None:
    checks = int(run.loop.grad_checks.sum())
    if checks == 0:
        return ("no gradient checks: they run right after an optimizer step, pass the optimizer, "
                "gradscope.watch(model, optimizer=opt)")
    if checks < th.loop_min_steps:
        return f"only {checks} gradient check(s); needs {th.loop_min_steps}"
    return None


GRAD_CHECKS = Need("gradient checks after optimizer steps (``watch(..., optimizer=)``), at least "
                   "``loop_min_steps``", _no_grad_checks)


def _ends(steps: np.ndarray) -> tuple[int, int] | None:
    return (int(steps[0]), int(steps[-1])) if steps.size else None


def grad_not_zeroed(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """The gradients are never zeroed between optimizer steps: each step follows the sum of all earlier gradients.

    Symptom: the total gradient norm grows step after step (it is the running sum of every step's gradient),
    training is unstable or diverges, or, with an adaptive optimizer, crawls along the first steps' directions.

    Detected when, of the backwards checked (the first backward after each optimizer step, with
    ``watch(..., optimizer=)``), at least ``grad_not_zeroed_fraction`` found ``.grad`` still the very tensor the
    previous optimizer step used, unmodified, and at least ``loop_min_steps`` were checked. The check is a
    host-side identity and version test (no tensor op): ``optimizer.zero_grad()`` sets ``.grad`` to None or
    zeroes it in place, and either way it is no longer that tensor; a check that cannot tell (a loss term that
    already accumulated into ``.grad``) counts as zeroed, so the rule can miss, never accuse wrongly. Gradient
    accumulation over micro-batches is a step per optimizer step and zeroes after it: not flagged. Without
    ``optimizer=`` there are no checks ("not evaluated").

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower bound
    (``confidence_support_level``) of the fraction of checked backwards that were stale — and the margin
    (fraction − ``grad_not_zeroed_fraction``) / (1 − ``grad_not_zeroed_fraction``).

    Why it matters: ``loss.backward()`` adds into ``.grad``; without zeroing, step t uses g_1 + … + g_t, so the
    effective learning rate grows with t and old gradients keep pushing after the weights moved on.

    Fixes: ``optimizer.zero_grad()`` (``set_to_none=True``, the default) before each backward; or, when
    accumulating on purpose, step and zero once every k micro-batches and divide the loss by k.
    """
    code = Code.GRAD_NOT_ZEROED
    lp = run.loop
    checks = int(lp.grad_checks.sum())
    stale = lp.stale_grad_steps
    if checks <= 0:
        return []
    frac = min(1.0, stale.size / checks)
    if frac < th.grad_not_zeroed_fraction:
        return []
    steps = _ends(stale)
    msg = (f".grad was not zeroed before {stale.size} of {checks} checked backwards ({pct(frac)}; "
           f"{fmt_steps(steps) if steps else 'no step'}): each backward after an optimizer step added to the "
           f"gradient that step had already used (threshold {pct(th.grad_not_zeroed_fraction)} of the checks)")
    evidence = {"stale_steps": int(stale.size), "checked": checks, "fraction": frac,
                "first_stale_step": steps[0] if steps else None, "threshold": th.grad_not_zeroed_fraction}
    return [Finding(code, Severity.WARNING, "Gradients are not zeroed between optimizer steps", msg, steps=steps,
                    evidence=evidence,
                    confidence=confidence(mean(support(int(stale.size), checks, th.confidence_support_level),
                                               fraction_margin(frac, th.grad_not_zeroed_fraction)),
                                          th.confidence_floor))]


def grad_not_zeroed_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    return [
        Fix(FixKind.TRAINING_LOOP,
            "Zero the gradients before each backward: optimizer.zero_grad() (set_to_none=True, the default)",
            "# first thing in every training step, before the forward pass and loss.backward():\n"
            "optimizer.zero_grad(set_to_none=True)"),
        Fix(FixKind.TRAINING_LOOP,
            "If you accumulate gradients on purpose: step and zero once every k micro-batches, and divide the loss "
            "by k",
            "# accumulating k micro-batches on purpose: divide each micro-batch's loss by k before loss.backward(),\n"
            "# and after every k-th micro-batch only:\n"
            "optimizer.step()\n"
            "optimizer.zero_grad(set_to_none=True)"),
    ]


def _mode_modules(run: Run) -> dict[str, int]:
    """Modules that act differently in eval mode, by class name: the header's ``extra["mode_modules"]`` (the
    watch counts dropout with p > 0, batch norm with running statistics, RNNs/attention with dropout), or, in
    a log without it, the watched layers whose type is a batch norm (dropout has no parameters, so it is no
    watched layer)."""
    h = run.header
    got = h.extra.get("mode_modules") if h is not None else None
    if isinstance(got, dict):
        return {str(k): int(v) for k, v in got.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    out: dict[str, int] = {}
    for la in run.layers:
        if "batchnorm" in la.type.lower():
            out[la.type] = out.get(la.type, 0) + 1
    return out


def _frozen_batchnorm_only(run: Run, modes: dict[str, int]) -> bool:
    """Every mode-dependent module is a batch norm, and no batch-norm layer has a trainable parameter: the
    shape of fine-tuning with batch norm frozen on purpose."""
    if not modes or not all("batchnorm" in k.lower() for k in modes):
        return False
    trainable = {p.name for p in run.params}
    return not any(p in trainable for la in run.layers if "batchnorm" in la.type.lower() for p in la.params)


@dataclass(frozen=True)
class EvalModeDetail:
    """What ``eval_mode_training`` hands its fixes: whether the run looks like frozen batch norm on purpose."""

    frozen_bn: bool = False


def eval_mode_training(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """The model trains in eval mode: ``model.eval()`` was left on (after validation), so dropout is off and batch
    norm normalizes with stale running statistics while the weights are trained.

    Symptom: the first epoch trains normally, later ones overfit faster (no dropout) or drift (batch norm's
    running statistics no longer follow the weights, and its affine parameters are trained against them);
    validation right after training looks no different, because validation is in eval mode anyway.

    Detected when at least ``eval_mode_fraction`` of the steps the ``loop`` records cover (at least
    ``loop_min_steps``) had a training forward pass of the root module in eval mode that a backward followed,
    and the model has a module that acts differently in eval mode (the header's ``mode_modules``: dropout with
    p > 0, batch norm with running statistics, RNNs/attention with dropout; without one, eval mode changes
    nothing and the rule says nothing). Only the root module's mode is checked: a model in train mode with only
    its batch-norm layers in eval (``model.train()`` then ``bn.eval()`` on each) is not flagged at all — that is
    how to mark batch norm frozen on purpose. A model trained entirely in eval mode whose only mode-dependent
    modules are batch norms with no trainable parameter (frozen-BN fine-tuning) is reported at info only.

    Confidence: ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower bound
    (``confidence_support_level``) of the fraction of covered steps trained in eval mode — and the margin
    (fraction − ``eval_mode_fraction``) / (1 − ``eval_mode_fraction``).

    Why it matters: dropout is part of the model being trained (off, the network co-adapts and overfits), and
    batch norm in eval mode neither normalizes with the batch's statistics nor updates its running ones, so the
    layer trains against numbers that no longer describe its input.

    Fixes: ``model.train()`` at the top of every training epoch (after the validation's ``model.eval()``); if
    batch norm is to stay frozen, put the model in train mode and only the batch-norm layers in eval mode.
    """
    code = Code.EVAL_MODE_TRAINING
    lp = run.loop
    covered = lp.n_steps
    modes = _mode_modules(run)
    if covered <= 0 or not modes:
        return []
    evals = lp.eval_steps
    frac = min(1.0, evals.size / covered)
    if frac < th.eval_mode_fraction:
        return []
    frozen = _frozen_batchnorm_only(run, modes)
    steps = _ends(evals)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(modes.items()))
    msg = (f"{evals.size} of {covered} training steps ({pct(frac)}; {fmt_steps(steps) if steps else 'no step'}) "
           f"ran their forward pass with the model in eval mode, and it has modules that act differently then "
           f"({kinds}) (threshold {pct(th.eval_mode_fraction)} of the steps)")
    if frozen:
        msg += ("; every one is a batch norm without trainable parameters, as in fine-tuning with batch norm "
                "frozen on purpose (then mark it so: model.train() and .eval() on the batch-norm layers only)")
    evidence = {"eval_steps": int(evals.size), "steps": covered, "fraction": frac, "mode_modules": modes,
                "eval_forwards": int(lp.eval_forwards.sum()), "forwards": int(lp.forwards.sum()),
                "frozen_batchnorm": frozen, "threshold": th.eval_mode_fraction}
    return [Finding(code, Severity.INFO if frozen else Severity.WARNING, "The model trains in eval mode", msg,
                    steps=steps, evidence=evidence, detail=EvalModeDetail(frozen),
                    confidence=confidence(mean(support(int(evals.size), covered, th.confidence_support_level),
                                               fraction_margin(frac, th.eval_mode_fraction)), th.confidence_floor))]


def eval_mode_training_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    return [
        Fix(FixKind.TRAINING_LOOP,
            "Put the model back in train mode at the top of every training epoch (validation's model.eval() "
            "stays on otherwise)",
            "# at the top of every training epoch, after the validation's model.eval() and torch.no_grad():\n"
            "model.train()"),
        Fix(FixKind.TRAINING_LOOP,
            "If batch norm is to stay frozen on purpose: keep the model in train mode and put only the batch-norm "
            "layers in eval mode (after every model.train())",
            "model.train()\n"
            "for m in model.modules():\n"
            "    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):\n"
            "        torch.nn.Module.train(m, False)   # m.eval()"),
    ]


def _no_nograd_passes(run: Run, th: Thresholds) -> str | None:
    if run.loop.records == 0:
        return "the log has no loop records (written by gradscope since issue 12's loop checks)"
    return None


LOOP_ANY = Need("``loop`` records", _no_nograd_passes)


@dataclass(frozen=True)
class TrainModeEvalDetail:
    """What ``train_mode_eval`` hands its fixes: whether the passes look like Monte Carlo sampling on purpose."""

    sampling: bool = False


def train_mode_eval(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """Validation runs in train mode: forward passes under ``torch.no_grad()`` without ``model.eval()``, on a model
    whose dropout or batch norm acts differently in train mode.

    Symptom: validation metrics are noisier and worse than the model is (dropout drops units while validating),
    and with batch norm they depend on the validation batch; batch norm's running statistics are updated with
    validation data, so the model that is saved and deployed normalizes with statistics that are partly the
    validation set's.

    Detected when at least ``train_mode_eval_min_forwards`` root forward passes ran with grad disabled while the
    model was in train mode (the ``loop`` records' ``train_nograd_forwards``; such a pass is never a training
    step), and the model has a module that acts differently in eval mode (the header's ``mode_modules``;
    without one the mode changes nothing and the rule says nothing). Monte Carlo dropout on purpose samples one
    batch many times: when at least ``train_mode_eval_repeat_fraction`` of the passes were fed the very input
    tensor of the pass before, the finding is info only. Only the root module's mode is checked: to mark Monte
    Carlo dropout, put the model in eval mode and only its dropout layers in train mode — then nothing is
    counted, and batch norm keeps its running statistics. (``torch.optim.swa_utils.update_bn`` runs such
    passes on purpose to recompute batch-norm statistics; a new batch each time, so it reads as this bug.)

    Confidence: the warning, ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower
    bound (``confidence_support_level``) of the fraction of passes fed a new input — and the margin (that
    fraction − (1 − ``train_mode_eval_repeat_fraction``)) / ``train_mode_eval_repeat_fraction``; the info (Monte
    Carlo sampling?), floor × (1 − the Wilson lower bound of the fraction of repeated inputs): below the floor,
    lower the more passes repeat.

    Why it matters: ``torch.no_grad()`` only stops gradients; the mode is a separate switch. A validation loop
    that forgets ``model.eval()`` measures a different network from the one that will be used, and with batch
    norm it changes the model itself.

    Fixes: ``model.eval()`` before each validation (and ``model.train()`` before training resumes); for Monte
    Carlo dropout, the model in eval mode with only the dropout layers in train mode.
    """
    code = Code.TRAIN_MODE_EVAL
    lp = run.loop
    counts = lp.train_nograd_forwards
    n, r = int(counts.sum()), int(lp.train_nograd_repeats.sum())
    modes = _mode_modules(run)
    if n < th.train_mode_eval_min_forwards or not modes:
        return []
    rep = min(1.0, r / n)
    sampling = rep >= th.train_mode_eval_repeat_fraction
    rows = np.flatnonzero(counts > 0)
    span = lp.span[rows]
    steps = (int(np.minimum(span[:, 0], span[:, 1]).min()), int(span[:, 1].max()))
    kinds = ", ".join(f"{c} {k}" for k, c in sorted(modes.items()))
    msg = (f"{n} forward pass(es) ran with grad disabled while the model was in train mode (around "
           f"{fmt_steps(steps)}), and it has modules that act differently in train mode ({kinds}): validation "
           f"under torch.no_grad() without model.eval()? (threshold {th.train_mode_eval_min_forwards} passes)")
    if sampling:
        msg += (f"; {pct(rep)} of them were fed the same input as the pass before, as Monte Carlo dropout samples "
                "one batch: on purpose? (then mark it so: model.eval() and .train() on the dropout layers only)")
    if sampling:
        conf = th.confidence_floor * (1.0 - support(r, n, th.confidence_support_level))
    else:
        conf = confidence(mean(support(n - r, n, th.confidence_support_level),
                               fraction_margin(1.0 - rep, 1.0 - th.train_mode_eval_repeat_fraction)),
                          th.confidence_floor)
    evidence = {"passes": n, "repeated_inputs": r, "repeat_fraction": rep, "mode_modules": modes,
                "threshold": th.train_mode_eval_min_forwards,
                "repeat_threshold": th.train_mode_eval_repeat_fraction}
    return [Finding(code, Severity.INFO if sampling else Severity.WARNING, "Validation runs in train mode", msg,
                    steps=steps, evidence=evidence, confidence=conf, detail=TrainModeEvalDetail(sampling))]


def train_mode_eval_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    return [
        Fix(FixKind.TRAINING_LOOP,
            "Put the model in eval mode before each validation pass (torch.no_grad() does not), and back in train "
            "mode before training resumes",
            "# before each validation pass under torch.no_grad(); model.train() again before the next training step:\n"
            "model.train(False)   # the same as model.eval()"),
        Fix(FixKind.TRAINING_LOOP,
            "If you sample with dropout on purpose (Monte Carlo dropout): keep the model in eval mode and put only the "
            "dropout layers in train mode, so batch norm keeps its running statistics",
            "model.train(False)   # model.eval()\n"
            "for m in model.modules():\n"
            "    if isinstance(m, torch.nn.modules.dropout._DropoutNd):\n"
            "        torch.nn.Module.train(m, True)"),
    ]


# --------------------------------------------------------------------------------- probabilities_as_logits

def _output_measured(run: Run) -> np.ndarray:
    """Rows of the loop records whose model output was measured (min and both row sums finite, 2+ classes)."""
    lp = run.loop
    if lp.output_cols.size != lp.records:
        return np.zeros(0, dtype=np.int64)
    ok = (lp.output_cols >= 2) & np.isfinite(lp.output_min) & np.isfinite(lp.output_sum_lo) \
        & np.isfinite(lp.output_sum_hi)
    return np.flatnonzero(ok)


def _no_output(run: Run, th: Thresholds) -> str | None:
    n = _output_measured(run).size
    if n < th.loop_min_steps:
        return (f"the model output was measured on {n} recorded step(s); needs {th.loop_min_steps} (a log older "
                "than this check, or no model output with 2 or more classes)")
    return None


OUTPUT_MEASURED = Need("the model output measured on at least ``loop_min_steps`` recorded steps (``loop`` records)",
                       _no_output)


def probs_floor(classes: int) -> float:
    """The least ``nn.CrossEntropyLoss`` can be on probabilities over ``classes`` classes: softmax of a one-hot
    row gives the target e / (e + C − 1), so the loss is ≥ log(C + e − 1) − 1."""
    return math.log(classes + math.e - 1.0) - 1.0


@dataclass(frozen=True)
class ProbsDetail:
    """What ``probabilities_as_logits`` hands its fixes: the classes, and whether the loss confirmed it."""

    classes: int = 2
    confirmed: bool = False


def probabilities_as_logits(run: Run, th: Thresholds, ctx: Context) -> RuleResult:
    """The model outputs probabilities (a final softmax) and they go into ``nn.CrossEntropyLoss``, which applies
    log-softmax itself: softmax twice.

    Symptom: the loss falls at first, then stops at a floor well above 0 however long it trains (1.46 for 10
    classes), gradients are small, accuracy can still look reasonable.

    Detected when, on at least ``probs_fraction`` of the recorded steps whose model output was measured (at
    least ``loop_min_steps``; the first floating-point output of 2+ dimensions, its classes along dim 1 of a 2-D
    output, the last dim otherwise, at least 2 of them), every entry was ≥ 0 and every row summed to 1 within
    ``probs_sum_tolerance`` — and then by the logged loss (``train_loss``, else ``val_loss``, at least
    ``loop_min_steps`` values). ``nn.CrossEntropyLoss`` on probabilities p cannot go below log(C + e − 1) − 1
    (C classes: the softmax of a one-hot p gives the target only e / (e + C − 1)): a loss whose minimum is
    at or above that floor (less ``probs_floor_slack``) after falling at least ``probs_floor_near`` of the way
    there from chance (log C) is a warning. A loss below the floor is not cross-entropy on these probabilities
    (``NLLLoss(torch.log(p))``, or a loss of its own): nothing is said. Without a logged loss, or with one still
    near chance, the finding is info and worded conditionally. A one-column output (sigmoid with
    ``BCELoss``) is never judged, and multi-label sigmoid outputs do not sum to 1.

    Confidence: the warning, ``confidence_floor`` + (1 − floor) × the mean of the support — the Wilson lower
    bound (``confidence_support_level``) of the fraction of measured steps whose output was probabilities — and
    the margin (progress − ``probs_floor_near``) / (1 − ``probs_floor_near``), progress being how far the loss came
    from chance towards the floor; the conditional info, floor × that support.

    Why it matters: softmax of values in [0, 1] can only move each logit by 1, so the predicted distribution
    stays close to uniform, the loss never reaches 0 and its gradient is squashed by the second softmax's
    Jacobian: training is slow and ends at a floor.

    Fixes: drop the final softmax and give the logits to ``nn.CrossEntropyLoss`` (softmax only for metrics and
    inference); or keep the probabilities and use ``nn.NLLLoss`` on their log (better: ``log_softmax`` in the
    model).
    """
    code = Code.PROBABILITIES_AS_LOGITS
    lp = run.loop
    rows = _output_measured(run)
    if rows.size == 0:
        return []
    dev = np.maximum(np.abs(lp.output_sum_lo[rows] - 1.0), np.abs(lp.output_sum_hi[rows] - 1.0))
    probs = (lp.output_min[rows] >= 0.0) & (dev <= th.probs_sum_tolerance)
    frac = float(probs.mean())
    if frac < th.probs_fraction:
        return []
    classes = int(np.median(lp.output_cols[rows][probs]))
    floor = probs_floor(classes)
    chance = math.log(classes)
    span = lp.span[rows[probs]]
    steps = (int(span[:, 1].min()), int(span[:, 1].max()))
    what = (f"the model output was probabilities on {int(probs.sum())} of {rows.size} measured steps "
            f"({pct(frac)}; {fmt_steps(steps)}): {classes} columns, every entry ≥ 0 (least "
            f"{fmt_num(float(lp.output_min[rows][probs].min()))}), every row summing to 1 within "
            f"{fmt_num(float(dev[probs].max()))}")
    evidence: dict[str, object] = {"prob_steps": int(probs.sum()), "measured": int(rows.size), "fraction": frac,
                                   "classes": classes, "floor": floor, "max_row_sum_dev": float(dev[probs].max()),
                                   "threshold": th.probs_fraction}
    metric = None
    for key in ("train_loss", "val_loss"):
        _, v = finite_series(run.metrics.get(key))
        if v.size >= th.loop_min_steps:
            metric, low = key, float(v.min())
            break
    confirmed = False
    held = support(int(probs.sum()), int(rows.size), th.confidence_support_level)   # for the confidence
    if metric is not None:
        evidence.update(loss_metric=metric, loss_min=low)
        if low < floor * (1.0 - th.probs_floor_slack):
            return []   # the loss went where cross-entropy on these probabilities cannot: NLL(log p), BCE, ...
        confirmed = chance - low >= th.probs_floor_near * (chance - floor)
    if confirmed:
        msg = (f"{what}; the logged {metric} never went below {fmt_num(low)}, and nn.CrossEntropyLoss on "
               f"probabilities cannot go below log(C + e − 1) − 1 = {fmt_num(floor)} for {classes} classes "
               f"(chance: {fmt_num(chance)}): softmax applied twice")
        return [Finding(code, Severity.WARNING, "Probabilities fed to a loss that expects logits", msg,
                        steps=steps, evidence=evidence, detail=ProbsDetail(classes, True),
                        confidence=confidence(mean(held, fraction_margin((chance - low) / (chance - floor),
                                                                         th.probs_floor_near)), th.confidence_floor))]
    loss = (f"the logged {metric} (least {fmt_num(low)}) is still above that floor, near chance "
            f"({fmt_num(chance)})" if metric is not None else "no train_loss is logged to tell")
    msg = (f"{what}. If these probabilities go into nn.CrossEntropyLoss (or F.cross_entropy), softmax is applied "
           f"twice and the loss cannot go below {fmt_num(floor)}; with NLLLoss on their log or a loss made for "
           f"probabilities this is fine ({loss})")
    return [Finding(code, Severity.INFO, "The model outputs probabilities: not logits for CrossEntropyLoss?", msg,
                    steps=steps, evidence=evidence, confidence=th.confidence_floor * held,
                    detail=ProbsDetail(classes, False))]


def probabilities_as_logits_fixes(f: Finding, run: Run, th: Thresholds) -> list[Fix | None]:
    return [
        Fix(FixKind.ACTIVATION,
            "Drop the final softmax: return the logits and let nn.CrossEntropyLoss apply log-softmax (softmax only "
            "for metrics and inference)",
            "# a softmax module at the end of the model becomes the identity (F.softmax/torch.softmax in forward():\n"
            "# return the logits instead); apply torch.softmax(logits, dim=1) only for metrics and inference\n"
            "for parent in model.modules():\n"
            "    for name, child in list(parent.named_children()):\n"
            "        if isinstance(child, torch.nn.Softmax):\n"
            "            setattr(parent, name, torch.nn.Identity())"),
        Fix(FixKind.TRAINING_LOOP,
            "Or keep the probabilities and use NLLLoss on their log (log_softmax in the model is more stable)",
            "criterion = torch.nn.NLLLoss()   # instead of torch.nn.CrossEntropyLoss()\n"
            "# loss = criterion(torch.log(probs.clamp_min(1e-12)), target)"),
    ]


RULES = (
    Rule(Code.PARAM_NOT_UPDATED, param_not_updated, param_not_updated_fixes, "loop",
         needs=(LOG, STEPS, param_stat("update_ratio"), param_stat("grad_norm"))),
    Rule(Code.NO_GRADIENT, no_gradient, no_gradient_fixes, "loop",
         needs=(LOG, STEPS, param_stat("grad_norm"), layer_stat("calls"))),
    Rule(Code.LR_PLATEAU, lr_plateau, lr_plateau_fixes, "loop", needs=(LOG, RECORDED_LR, LOSS_CURVE)),
    Rule(Code.GRAD_NOT_ZEROED, grad_not_zeroed, grad_not_zeroed_fixes, "loop",
         needs=(LOG, LOOP_RECORDS, GRAD_CHECKS)),
    Rule(Code.EVAL_MODE_TRAINING, eval_mode_training, eval_mode_training_fixes, "loop", needs=(LOG, LOOP_RECORDS)),
    Rule(Code.TRAIN_MODE_EVAL, train_mode_eval, train_mode_eval_fixes, "loop", needs=(LOG, LOOP_ANY)),
    Rule(Code.PROBABILITIES_AS_LOGITS, probabilities_as_logits, probabilities_as_logits_fixes, "loop",
         needs=(LOG, OUTPUT_MEASURED)),
)
"""This family's registry entries (``gradscope.judge.rules.RULES`` orders them with the others)."""
