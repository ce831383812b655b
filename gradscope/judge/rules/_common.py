"""Helpers shared by the rule families: layer selection, per-step quantities, persistence, ranges.

Nothing here decides a verdict; the numbers that do live in ``Thresholds``.
"""

from __future__ import annotations

import inspect
import keyword
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gradscope._numbers import fmt_num
from gradscope.judge.findings import Code, Finding, Fix, NotEvaluated
from gradscope.judge.thresholds import Thresholds
from gradscope.store.run import Run, Series
from gradscope.store.schema import LayerInfo

# Layer types whose weights are not a linear map feeding an activation: their gradients and variances follow
# other laws (normalization gains sit near 1; embedding rows get gradient only when their token appears).
_NOT_WEIGHTED = ("norm", "embedding")


@dataclass
class Context:
    """What a rule may know besides the run: user options and the findings of rules that ran before it."""

    baseline_error: float | None = None
    findings: list[Finding] = field(default_factory=list)

    def has(self, *codes: Code) -> bool:
        return any(f.code in codes for f in self.findings)


RuleResult = list[Finding] | NotEvaluated
RuleFunc = Callable[[Run, Thresholds, Context], RuleResult]
FixFunc = Callable[[Finding, Run, Thresholds], list[Fix | None]]
"""A rule's fixes: the finding (with its typed ``detail``), the run and the thresholds → fixes, most direct
first; ``None`` entries (a fix that does not apply to this model) are dropped."""


@dataclass(frozen=True)
class Need:
    """One thing a rule needs from the run before it can judge (cockpit instruments' ``requires``).

    ``what`` says it for the docs ("a gradscope log"); ``missing(run, thresholds)`` returns why it is absent,
    or None when it is there. The engine checks a rule's needs in order and reports the first missing one as
    "not evaluated", so every rule says it the same way."""

    what: str
    missing: Callable[[Run, Thresholds], str | None]


NO_LOG = "no gradscope log (only TensorBoard scalars): per-layer statistics unavailable"

LOG = Need("a gradscope log (not only TensorBoard scalars)", lambda run, th: NO_LOG if run.header is None else None)


def _few_steps(run: Run, th: Thresholds) -> str | None:
    if run.steps.size < th.min_recorded_steps:
        return f"only {run.steps.size} recorded step(s); needs {th.min_recorded_steps}"
    return None


STEPS = Need("at least ``min_recorded_steps`` recorded steps", _few_steps)


def layer_stat(name: str) -> Need:
    """The log has the per-layer statistic ``name`` (``run.layer_stats``)."""
    def missing(run: Run, th: Thresholds) -> str | None:
        return None if stat(run, "layer", name) is not None else f"the log has no per-layer '{name}' statistics"
    return Need(f"per-layer ``{name}`` statistics", missing)


def param_stat(name: str) -> Need:
    """The log has the per-parameter statistic ``name`` (``run.param_stats``)."""
    def missing(run: Run, th: Thresholds) -> str | None:
        return None if stat(run, "param", name) is not None else f"the log has no per-parameter '{name}' statistics"
    return Need(f"per-parameter ``{name}`` statistics", missing)


@dataclass(frozen=True)
class Rule:
    """One registry entry per finding code: the rule, its fixes, its family and what it needs.

    ``func`` returns findings without fixes (or ``NotEvaluated`` for a reason only it can see); the engine
    adds ``fixes(finding, run, thresholds)`` to each. Both live in ``rules/<family>.py``."""

    code: Code
    func: RuleFunc
    fixes: FixFunc
    family: str
    needs: tuple[Need, ...] = ()

    @property
    def name(self) -> str:
        return self.code.value

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    def missing(self, run: Run, th: Thresholds) -> str | None:
        """Why this rule cannot run on ``run`` (its first missing need), or None."""
        for need in self.needs:
            reason = need.missing(run, th)
            if reason:
                return reason
        return None

    def __call__(self, run: Run, th: Thresholds, ctx: Context) -> RuleResult:
        """The rule with its needs checked first: "not evaluated" when one is missing, else ``func``'s result.
        (``func`` itself assumes its needs are met.)"""
        reason = self.missing(run, th)
        return NotEvaluated(self.code, reason) if reason else self.func(run, th, ctx)


def _attr_ok(part: str) -> bool:
    return part.isascii() and part.isidentifier() and not keyword.iskeyword(part)


def _index_ok(part: str) -> bool:
    return part.isascii() and part.isdigit() and str(int(part)) == part


def is_plain_path(name: str) -> bool:
    """The qualified module name is a plain Python access path: ASCII identifiers and integer indices only
    (what ``named_modules()`` gives for attributes and ``Sequential``/``ModuleList`` children). Layer names come
    from the log, so a crafted one must never be pasted into a snippet as code."""
    return not name or all(_attr_ok(p) or _index_ok(p) for p in name.split("."))


def module_path(name: str, root: str = "model") -> str:
    """Python access path of a qualified module name: "fc2" → model.fc2, "encoder.0" → model.encoder[0].

    A name that is not a plain access path (a keyword, a non-ASCII or crafted name with quotes, calls or
    newlines) becomes ``model.get_submodule('...')`` with the name as a ``repr()`` string literal: still a
    valid expression, and the name is data, never code."""
    if not name:
        return root
    if not is_plain_path(name):
        return f"{root}.get_submodule({name!r})"
    out = root
    for part in name.split("."):
        out += f"[{part}]" if _index_ok(part) else f".{part}"
    return out


def label(name: str) -> str:
    """How a message names a layer: its own name ("fc2", "encoder.layers.0.linear1"), or its access path when the
    name is only an index ("0" → model[0]), which reads as a number otherwise ("0: gradient 1e-12× that of 24")."""
    return name if any(c.isalpha() for c in name) else module_path(name)


def is_weighted(la: LayerInfo) -> bool:
    t = la.type.lower()
    return la.weight is not None and not any(k in t for k in _NOT_WEIGHTED)


def param_index(run: Run) -> dict[str, int]:
    return {p.name: i for i, p in enumerate(run.params)}


def weighted_layers(run: Run) -> list[tuple[int, int]]:
    """(layer index, weight param index) of layers with a main weight, in forward order (header order)."""
    pidx = param_index(run)
    out = []
    for i, la in enumerate(run.layers):
        if is_weighted(la) and la.weight in pidx:
            out.append((i, pidx[la.weight]))
    return out


def stat(run: Run, table: str, name: str) -> np.ndarray | None:
    """(S, L|P) column or None when absent."""
    d = run.layer_stats if table == "layer" else run.param_stats
    a = d.get(name)
    if a is None or a.size == 0:
        return None
    return np.asarray(a, dtype=float)


def safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(a, dtype=float) / np.asarray(b, dtype=float)
    out[~np.isfinite(out)] = np.nan
    return out


def nanmedian(a: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``np.nanmedian`` without the all-NaN warning (NaN out instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis)


def nanpercentile(a: np.ndarray, q: float) -> float:
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if a.size else math.nan


def early_count(n: int, th: Thresholds) -> int:
    """Size of the early reference window among ``n`` values."""
    return min(n, max(th.early_min_steps, math.ceil(n * th.early_fraction)))


def early_reference(values: np.ndarray, th: Thresholds) -> float:
    """The healthy level of a series' early window (NaN when it has no finite value): its median, unless the
    series blew up inside the window — its medians of ``early_min_steps`` consecutive values span
    ``exploding_growth``× or more — and then the lowest of those medians.

    A plain median of the early window is the exploded level itself when a run blows up inside it (an RNN whose
    gradients explode within the first 20 steps): growth would be measured from the explosion and a clipping
    norm taken from it. The lowest short-window median is the run before trouble, and still robust to one
    noisy step; a window without a blow-up keeps its median (a norm that rises steadily is judged as before)."""
    v = np.asarray(values, dtype=float)[:early_count(len(values), th)]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    med = float(np.median(v))
    w = min(th.early_min_steps, v.size)
    meds = np.median(np.lib.stride_tricks.sliding_window_view(v, w), axis=1)
    lo, hi = float(np.min(meds)), float(np.max(meds))
    return lo if lo > 0 and hi >= th.exploding_growth * lo else med


def tail_slice(n: int, th: Thresholds) -> slice:
    k = max(1, math.ceil(n * th.tail_fraction))
    return slice(n - k, n)


def step_range(steps: Sequence[int] | np.ndarray) -> tuple[int, int] | None:
    s = np.asarray(steps)
    if s.size == 0:
        return None
    return int(s.min()), int(s.max())


def fmt_steps(r: tuple[int, int] | None) -> str:
    if r is None:
        return "no steps"
    return f"step {r[0]}" if r[0] == r[1] else f"steps {r[0]}–{r[1]}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if abs(100 * x - round(100 * x)) < 0.05 or abs(x) >= 0.1 else f"{100 * x:.1f}%"


def finite_series(s: Series | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a metric with non-finite values dropped, sorted by step."""
    if s is None or len(s) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    order = np.argsort(s.steps, kind="stable")
    st, v = np.asarray(s.steps)[order], np.asarray(s.values, dtype=float)[order]
    ok = np.isfinite(v)
    return st[ok], v[ok]


def optimizer_name(run: Run) -> str | None:
    opt = run.header.optimizer if run.header is not None else None
    if not opt:
        return None
    for key in ("class", "name", "type", "optimizer"):
        v = opt.get(key)
        if isinstance(v, str) and v:
            return v
    return None


_ADAPTIVE = ("adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam", "lion", "adafactor", "lamb")


def is_adaptive(run: Run) -> bool:
    """Adam-like optimizer (per-element step ≈ lr regardless of the gradient's scale)."""
    name = optimizer_name(run)
    return name is not None and any(k in name.lower() for k in _ADAPTIVE)


def current_lr(run: Run) -> float | None:
    """Median learning rate of the first param group over the recorded steps, else the optimizer's lr."""
    vals = [r[0] for r in run.lr if r and r[0] is not None and math.isfinite(r[0]) and r[0] > 0]
    if vals:
        return float(np.median(vals))
    v = optimizer_hparam(run, "lr")
    if v is None:
        v = optimizer_hparam(run, "learning_rate")
    return v if v is not None and v > 0 else None


def optimizer_hparam(run: Run, key: str) -> float | None:
    """A numeric optimizer hyperparameter from the header: top level, ``defaults``, or the first param group
    (``watch`` writes ``{"class": ..., "groups": [{"lr": ..., "weight_decay": ...}, ...]}``)."""
    opt = run.header.optimizer if run.header is not None else None
    if not isinstance(opt, dict):
        return None
    places: list[object] = [opt, opt.get("defaults")]
    groups = opt.get("groups") or opt.get("param_groups")
    if isinstance(groups, list) and groups:
        places.append(groups[0])
    for d in places:
        if isinstance(d, dict):
            v = d.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                return float(v)
    return None


def output_layer(run: Run) -> int | None:
    """Index of the last weighted layer (the model's head), if any — a head whose weight is tied to another
    layer's (a language model's decoder sharing the token embedding: its weight is recorded once, under the
    embedding's name) included."""
    w = weighted_layers(run)
    last = w[-1][0] if w else None
    for i in range(len(run.layers) - 1, (last if last is not None else -1), -1):
        la = run.layers[i]
        if is_weighted(la) and la.type.lower() == "linear":
            return i
    return last


def first_divergent_step(run: Run) -> int | None:
    """The first training step at which the run's numbers stopped being finite, or None.

    Counts a ``nonfinite`` record (loss, activation, output, gradient) on a step an AMP GradScaler did not
    skip, a recorded step whose activations held NaN/Inf (``layer_stats["nonfinite"]``) or whose activation
    variance is NaN/Inf while elements were counted, and non-finite parameter gradients on a step that was not
    skipped. A GradScaler skips overflowing steps on purpose and recovers: those are not divergence."""
    skipped = run.skipped if run.skipped.shape == run.steps.shape else np.zeros(run.steps.shape, dtype=bool)
    gnf0 = stat(run, "param", "grad_nonfinite")
    if not skipped.any() and gnf0 is not None and run.header is not None:
        nf_rows = np.asarray((gnf0 > 0).any(axis=1))      # NaN compares False
        # A GradScaler watch was not told about: its overflowing steps were skipped all the same (checked only
        # when there are non-finite gradients, the one case it changes).
        if nf_rows.any() and loss_scaling(run, Thresholds()) is not None:
            skipped = nf_rows
    skipped_steps = set(run.steps[skipped].tolist()) | run.scaler_skipped_steps()
    cands: list[int] = []
    for rec in run.nonfinite:
        if rec.step in skipped_steps and rec.where != "loss":
            continue
        cands.append(int(rec.step))
    if run.steps.size:
        bad = np.zeros(run.steps.shape, dtype=bool)
        nf = stat(run, "layer", "nonfinite")
        if nf is not None:
            bad |= (nf > 0).any(axis=1)
        var, cnt = stat(run, "layer", "var"), stat(run, "layer", "count")
        if var is not None and cnt is not None:
            counted = cnt > 0
            bad |= (counted & ~np.isfinite(var)).any(axis=1)
        if gnf0 is not None:
            bad |= (gnf0 > 0).any(axis=1) & ~skipped
        if skipped.any():
            # Under a scaler, an overflow on a skipped step is routine; only non-skipped steps count.
            bad &= ~skipped
        if bad.any():
            cands.append(int(run.steps[bad].min()))
    return min(cands) if cands else None


def finite_rows(run: Run) -> np.ndarray:
    """Boolean mask over recorded steps: True before the run diverged (see ``first_divergent_step``).

    Statistics recorded at or after the first non-finite value describe NaN weights, not the model: a NaN
    activation is never positive, so every ReLU unit would look dead and every saturating unit pinned. The
    activation and initialization rules judge only the rows this mask keeps."""
    first = first_divergent_step(run)
    if first is None:
        return np.ones(run.steps.shape, dtype=bool)
    return run.steps < first


# ---------------------------------------------------------------- issue 11: what the run is

_ACCURACY_KEYS = ("train_acc", "val_acc", "train_error", "val_error")


def head_outputs(run: Run) -> int | None:
    """Output units of the model's head (``output_layer``'s fan_out when it is a Linear, a head tied to the
    token embedding included), or None."""
    i = output_layer(run)
    if i is None:
        return None
    head = run.layers[i]
    return head.fan_out if head.type.lower() == "linear" and head.fan_out else None


def is_classifier(run: Run, th: Thresholds) -> bool:
    """Evidence that the run is a classifier with a softmax/cross-entropy head, not a regressor with several
    outputs (a VAE decoder, a multi-target regression): an accuracy or error metric is logged, or the head has
    C ≥ 2 outputs and the first training losses sit within ``classifier_start_band``× of the chance-level loss
    log(C) (an untrained classifier starts there; an MSE loss on C targets has no reason to)."""
    if any(finite_series(run.metrics.get(k))[1].size for k in _ACCURACY_KEYS):
        return True
    c = head_outputs(run)
    if c is None or c < 2:
        return False
    _, v = finite_series(run.metrics.get("train_loss"))
    if v.size == 0:
        return False
    start = float(np.median(v[:early_count(v.size, th)]))
    chance = math.log(c)
    return chance / th.classifier_start_band <= start <= chance * th.classifier_start_band


@dataclass(frozen=True)
class LossScaling:
    """What ``loss_scaling`` found: the recorded gradients are multiplied by an AMP loss scale that ``watch`` was
    not told about. ``scale`` per recorded step (NaN where unknown), ``how`` in words for a message."""

    scale: np.ndarray
    how: str

    @property
    def known(self) -> bool:
        return bool(np.isfinite(self.scale).any())


def loss_scaling(run: Run, th: Thresholds) -> LossScaling | None:
    """Gradients scaled by a ``GradScaler`` that was not passed to ``watch(scaler=)``, or None.

    Two signatures, neither of which a real explosion has: (1) the norm the optimizer used (``optimizer=``
    records it at ``step()``, after ``scaler.step`` unscaled the gradients) is below the backward norm by an
    exact power of two 2^k, k ≥ 1 (log2 within ``amp_log2_tol`` of an integer) on ``persistence`` of the steps —
    user clipping gives arbitrary ratios; (2) non-finite gradients on some steps while the weights stay finite
    afterwards and the gradients are ``exploding_relative_grad``× the weights: someone skipped those steps,
    as a scaler does on overflow, and the finite gradients are far larger than the weights allow. With
    ``scaler=`` passed gradscope records unscaled norms and skipped steps, and this returns None."""
    if run.header is None or not run.steps.size or (run.skipped.size and run.skipped.any()):
        return None
    g, c = np.asarray(run.grad_norm, dtype=float), np.asarray(run.clip_norm, dtype=float)
    if g.shape == c.shape == run.steps.shape:
        both = np.isfinite(g) & np.isfinite(c) & (g > 0) & (c > 0)
        if both.sum() >= th.min_recorded_steps:
            k = np.log2(g[both] / c[both])
            hit = (np.abs(k - np.round(k)) <= th.amp_log2_tol) & (np.round(k) >= 1)
            if hit.mean() >= th.persistence:
                scale = np.full(g.shape, np.nan)
                idx = np.nonzero(both)[0][hit]
                scale[idx] = 2.0 ** np.round(k[hit])
                ks = sorted({int(x) for x in np.round(k[hit])})
                span = f"2^{ks[0]}" if len(ks) == 1 else f"2^{ks[0]}–2^{ks[-1]}"
                return LossScaling(scale, f"the norm the optimizer used is the backward norm divided by exactly "
                                          f"{span} on {pct(float(hit.mean()))} of steps")
    gnf = stat(run, "param", "grad_nonfinite")
    pn = stat(run, "param", "norm")
    if gnf is None or pn is None:
        return None
    bad = (np.nan_to_num(gnf, nan=0.0) > 0).any(axis=1)
    if not bad.any() or bad.all():
        return None
    first = int(np.nonzero(bad)[0][0])
    weights_ok = bool(np.isfinite(pn[first:]).all())
    with np.errstate(invalid="ignore"):
        wn = np.sqrt(np.nansum(pn ** 2, axis=1))
        rel = g / wn if g.shape == wn.shape else np.full(wn.shape, np.nan)
    fin = rel[~bad & np.isfinite(rel)]
    if weights_ok and fin.size >= th.min_recorded_steps and float(np.median(fin)) > th.exploding_relative_grad:
        return LossScaling(np.full(run.steps.shape, np.nan),
                           f"{int(bad.sum())} recorded step(s) had non-finite gradients yet the weights stayed finite "
                           f"(the steps were skipped, as a GradScaler does), and the finite gradients are "
                           f"{fmt_num(float(np.median(fin)))}× the weights")
    return None


def total_weight_norm(run: Run) -> np.ndarray | None:
    """(S,) the total weight norm on each recorded step (NaN where not positive or unknown); None without
    ``norm`` records."""
    pn = stat(run, "param", "norm")
    if pn is None:
        return None
    with np.errstate(invalid="ignore"):
        sq = np.nansum(pn ** 2, axis=1)
    out = np.sqrt(sq)
    out[~(out > 0)] = np.nan
    return out


def grad_to_weight_before(run: Run, first_bad: int) -> float | None:
    """The largest finite total gradient norm over the total weight norm on the recorded steps before
    ``first_bad``; None when there is none. Gradients already ``exploding_relative_grad``× the weights before
    turning NaN/Inf exploded from the start (a deep stack initialized far too wide blows up on its first
    backward pass and overflows on the next): there was no "usual level" to grow from, so the NaN is the
    explosion's, not a non-finite value that got in."""
    wn = total_weight_norm(run)
    if wn is None or not run.grad_norm.size:
        return None
    rel = safe_div(run.grad_norm, wn)
    keep = np.isfinite(rel) & (run.steps < first_bad)
    return float(np.max(rel[keep])) if keep.any() else None


def falling_trend(steps: np.ndarray, values: np.ndarray, th: Thresholds) -> dict[str, float]:
    """The robust trend of ``values`` over ``steps``: the Theil–Sen slope with its ``lr_trend_confidence``
    interval (Sen 1968) and the one-sided Mann–Kendall test for a decrease, Kendall's tau and its p (Mann 1945;
    Kendall 1975; p is 1 when undefined). One noisy value neither makes nor breaks it. The "still falling" and
    "too slow" verdicts of the rules are built on it."""
    from scipy.stats import kendalltau, theilslopes  # imported here: the rest of the judge needs only numpy

    x = steps.astype(float)
    tau, p = kendalltau(x, values, alternative="less")
    slope, _, lo, hi = theilslopes(values, x, th.lr_trend_confidence)
    return {"tau": float(tau), "p": float(p) if np.isfinite(p) else 1.0, "slope": float(slope),
            "slope_low": float(lo), "slope_high": float(hi)}
