"""poor_init shown by the loss at initialization: far above chance level log(C), together with a mis-scaled layer
(issue 11: a GPT-2 with initializer_range=1.0 starts at 3× log(92), LayerNorm hides the depth signal)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradscope.judge.findings import Code
from gradscope.judge.rules import poor_init
from gradscope.judge.rules._common import Context
from gradscope.judge.rules.init import start_loss
from gradscope.judge.thresholds import Thresholds
from gradscope.store.schema import LayerInfo, ParamInfo
from tests.rulecases import L, healthy_run, mlp, set_metric

TH = Thresholds()
C = 10
CHANCE = math.log(C)


def _run(*, init_std: float | None = None, loss_start: float = CHANCE, accuracy: bool = True,
         widths: tuple[int, ...] = (20, 64, 64, C)):
    """An MLP classifier whose activations look healthy at every depth (nothing else shows), its training loss
    starting at ``loss_start``; hidden layers at ``init_std`` (None: PyTorch's default, within the band)."""
    n = len(widths) - 1
    layers = [L(f"fc{i + 1}", widths[i], widths[i + 1], "relu" if i < n - 1 else None,
                init_std=init_std if i < n - 1 else None) for i in range(n)]
    return healthy_run(layers, n=40, loss_start=loss_start, accuracy=accuracy)


def _shows_loss(r: object) -> bool:
    assert isinstance(r, list)
    return any("training loss starts at" in s for f in r for s in f.evidence["shows"])  # type: ignore[union-attr]


def test_fires_with_a_mis_scaled_layer_and_a_high_starting_loss() -> None:
    run = _run(init_std=1.0, loss_start=3 * CHANCE)          # var 1 vs He 2/20, 2/64: 10×, 32×
    r = poor_init(run, TH, Context())
    assert isinstance(r, list) and len(r) == 1
    f = r[0]
    assert f.code is Code.POOR_INIT and "fc2" in f.layers
    assert "shows as: the training loss starts at" in f.message and len(f.evidence["shows"]) == 1
    assert f"chance-level loss log({C}) = {CHANCE:.3g}" in f.message and "(threshold 2×)" in f.message
    assert f.evidence["classes"] == C and f.evidence["chance_loss"] == pytest.approx(CHANCE)
    assert f.evidence["start_loss_ratio"] == pytest.approx(f.evidence["start_loss"] / CHANCE)
    assert TH.confidence_floor < f.confidence < 1.0


def test_confidence_grows_with_the_starting_loss() -> None:
    lo = poor_init(_run(init_std=1.0, loss_start=2.6 * CHANCE), TH, Context())
    hi = poor_init(_run(init_std=1.0, loss_start=8 * CHANCE), TH, Context())
    assert isinstance(lo, list) and isinstance(hi, list) and lo and hi
    assert lo[0].confidence < hi[0].confidence


def test_a_high_starting_loss_alone_is_not_poor_init() -> None:
    """A correlation is not a cause: every layer within the band, so the loss alone never fires."""
    assert poor_init(_run(loss_start=5 * CHANCE), TH, Context()) == []


def test_a_mis_scaled_layer_alone_stays_quiet_when_nothing_shows() -> None:
    assert poor_init(_run(init_std=1.0, loss_start=1.1 * CHANCE), TH, Context()) == []


def test_a_starting_loss_just_below_the_factor_does_not_show() -> None:
    assert poor_init(_run(init_std=1.0, loss_start=1.7 * CHANCE), TH, Context()) == []


def test_regression_has_no_chance_level() -> None:
    """A head with several outputs, no accuracy and a start far from log(C): a regressor (MSE), never judged."""
    run = _run(init_std=1.0, loss_start=40.0, accuracy=False)
    assert start_loss(run, TH) is None
    assert poor_init(run, TH, Context()) == []


def test_a_single_output_head_has_no_chance_level() -> None:
    run = _run(init_std=1.0, loss_start=50.0, widths=(20, 64, 64, 1))
    assert poor_init(run, TH, Context()) == []


def test_a_zero_initialized_head_starts_at_chance() -> None:
    """A zero head (a common, harmless choice) gives uniform predictions: log(C) exactly, nothing to show."""
    run = _run(init_std=1.0, loss_start=CHANCE)
    run.params = tuple(ParamInfo(p.name, p.layer, p.shape, p.numel, 0.0, 0.0) if p.name == "fc3.weight" else p
                       for p in run.params)
    assert poor_init(run, TH, Context()) == []


def test_one_value_per_epoch_uses_the_first_epoch_mean() -> None:
    run = _run(init_std=1.0)
    set_metric(run, "train_loss", [9, 19, 29, 39], [3 * CHANCE, 1.5, 1.0, 0.8])
    sl = start_loss(run, TH)
    assert sl is not None and sl.n == 1 and sl.steps == (9, 9) and sl.value == pytest.approx(3 * CHANCE)
    r = poor_init(run, TH, Context())
    assert isinstance(r, list) and r and "the first logged value, step 9" in r[0].message


def test_a_first_epoch_mean_that_already_fell_does_not_show() -> None:
    run = _run(init_std=1.0)
    set_metric(run, "train_loss", [9, 19, 29, 39], [1.6 * CHANCE, 1.5, 1.0, 0.8])
    assert poor_init(run, TH, Context()) == []


def test_per_step_losses_use_the_median_of_the_first_few() -> None:
    """One noisy first step is not the start: the median of the first ``early_min_steps`` values."""
    run = _run(init_std=1.0)
    v = np.full(40, 0.5 * CHANCE)
    v[0] = 10 * CHANCE
    set_metric(run, "train_loss", np.arange(40), v)
    sl = start_loss(run, TH)
    assert sl is not None and sl.n == TH.early_min_steps and sl.value == pytest.approx(0.5 * CHANCE)
    assert poor_init(run, TH, Context()) == []


def _tied_lm(loss_start: float, vocab: int = 92):
    """A language model: token embedding (vocab → 48), a mis-scaled block, a head tied to the embedding (its
    weight listed once, under the embedding), no accuracy logged."""
    run = _run(init_std=1.0, loss_start=loss_start, accuracy=False, widths=(48, 192, 48, vocab))
    emb = LayerInfo(name="wte", type="Embedding", fan_in=48, fan_out=vocab, unit_dim=-1, act=None,
                    params=("wte.weight",), weight="wte.weight")
    head = run.layers[-1]
    tied = LayerInfo(name=head.name, type=head.type, fan_in=head.fan_in, fan_out=head.fan_out, unit_dim=-1,
                     act=None, params=("wte.weight",), weight="wte.weight")
    run.layers = (emb, *run.layers[:-1], tied)
    run.params = (ParamInfo("wte.weight", "wte", (vocab, 48), vocab * 48, 0.0, 1.0),
                  *(p for p in run.params if p.layer != head.name))
    for k, a in run.layer_stats.items():      # the embedding's column first, the statistics unchanged
        run.layer_stats[k] = np.concatenate([a[:, :1], a], axis=1)
    return run


def test_language_model_with_a_tied_head() -> None:
    run = _tied_lm(3 * math.log(92))
    sl = start_loss(run, TH)
    assert sl is not None and sl.classes == 92
    r = poor_init(run, TH, Context())
    assert isinstance(r, list) and r and _shows_loss(r) and "log(92)" in r[0].message


def test_language_model_starting_near_chance_is_quiet() -> None:
    assert poor_init(_tied_lm(1.1 * math.log(92)), TH, Context()) == []


def test_regressor_with_an_embedding_of_another_size_has_no_chance_level() -> None:
    run = _tied_lm(40.0, vocab=92)
    run.layers = (LayerInfo(name="wte", type="Embedding", fan_in=48, fan_out=50, unit_dim=-1, act=None,
                            params=("wte.weight",), weight="wte.weight"), *run.layers[1:])
    assert start_loss(run, TH) is None
    assert poor_init(run, TH, Context()) == []


def test_mlp_default_helper_unchanged() -> None:
    """The healthy default MLP (PyTorch's init) starting at log(C): quiet, as before."""
    assert poor_init(healthy_run(mlp(), n=30, accuracy=True), TH, Context()) == []
