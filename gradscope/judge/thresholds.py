"""Every number a rule uses, in one documented place.

Each field of ``Thresholds`` carries a docstring (the string literal after it) that says what it bounds, why
that value, and where the value comes from. Sources cited:

- Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", AISTATS 2010.
- He, Zhang, Ren & Sun, "Delving deep into rectifiers", ICCV 2015.
- Klambauer, Unterthiner, Mayr & Hochreiter, "Self-normalizing neural networks", NeurIPS 2017 (SELU, LeCun init).
- Amazon SageMaker Debugger built-in rule defaults, as documented in the "List of Debugger built-in rules"
  page of the SageMaker developer guide (re-checked against that page): ``VanishingGradient`` ``threshold``
  1e-7 (on the mean absolute gradient), ``DeadRelu`` and ``SaturatedActivation`` ``threshold_layer`` 50 %
  (``threshold_inactivity`` 1 %), ``PoorWeightInitialization`` ``threshold`` 10 (there: the ratio between the
  smallest and largest per-layer variance).
- AUTOTRAINER: X. Zhang, J. Zhai, S. Ma & C. Shen, "AUTOTRAINER: An automatic DNN training problem detection and
  repair system", ICSE 2021 (authors re-checked; the parameter values quoted below are as remembered from the
  paper and were not re-checked).
- A. Karpathy, CS231n notes "Neural Networks Part 3": update/weight ratio around 1e-3 (as documented there, not
  re-checked).
- Lightning's ``SpikeDetection`` (``lightning/fabric/utilities/spike.py``): relative tolerance 2 (not
  re-checked).
- "gradscope zoo": the healthy and broken runs in tests/; fields so marked are calibrated there (see
  docs/diagnoses.md), the rest start from the cited value and were checked against the zoo.

Users override single fields: ``Thresholds(dead_fraction=0.8)``, or from the CLI/config with
``Thresholds.from_mapping({"dead_fraction": "0.8"})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gradscope.errors import GradscopeError


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind every rule. Frozen: make a changed copy with ``replace(t, field=value)``."""

    # ---------------------------------------------------------------- general
    min_recorded_steps: int = 3
    """Recorded steps a statistics rule needs before it judges anything: one or two steps cannot show
    persistence, and the first step is often unrepresentative (weights still at init)."""

    persistence: float = 0.5
    """Fraction of recorded steps on which a condition must hold for vanishing gradients and learning-rate
    problems to count. One bad step is noise; a majority of steps is a property of the run (SageMaker
    Debugger rules likewise evaluate over many steps, not one)."""

    tail_fraction: float = 0.5
    """The last part of training (as a fraction of recorded steps) over which dead and saturated units are
    judged: units that die late stay dead, units dead only at init may recover."""

    early_fraction: float = 0.1
    """The first part of training taken as the reference ("early values") for growth of gradient norms and
    activations; at least ``early_min_steps`` steps."""

    early_min_steps: int = 3
    """Smallest number of steps in the early reference window, so one noisy first step is not the baseline."""

    # ---------------------------------------------------------------- vanishing gradients
    vanishing_ratio: float = 1e-3
    """Depth ratio below which gradients vanish: the first weighted layer's relative gradient
    ||∇W||/||W|| divided by the last one's. 1e-3 is, as we recall it, AUTOTRAINER's gradient-ratio parameter
    (not re-checked); at this ratio the first layer learns a thousand times slower than the head. gradscope zoo
    measurements (median over steps): healthy runs 1.3e-2–0.7, every non-vanishing run ≥ 1.3e-2; the vanishing
    runs this measure catches ≤ 1.7e-4 (deep sigmoid 2.6e-9, deep tanh 1.7e-4, 20-layer default-init ReLU
    3e-7); the stacked small-init RNN (6e-2) is caught by ``vanishing_hidden_ratio`` instead."""

    vanishing_ratio_error: float = 1e-5
    """Depth ratio below which vanishing is an error: the first layer is effectively frozen (a 10-layer
    sigmoid net at init, whose derivative is at most 0.25 per layer, gives about 0.25^9 ≈ 4e-6)."""

    vanishing_hidden_ratio: float = 1e-2
    """Norm of the loss gradient w.r.t. the first weighted layer's output over that w.r.t. the last hidden
    weighted layer's output below which the backpropagated signal vanishes through the stack (a hundredfold
    drop). Complements ``vanishing_ratio`` where the forward signal shrinks as much as the backward one, so
    that the weight-relative gradient ratio stays near 1 (four stacked vanilla RNNs initialized N(0, 0.03²):
    5.4e-3). gradscope zoo measurements (median over steps): healthy runs 0.5–3.9, every non-vanishing run
    ≥ 0.15, vanishing runs ≤ 5.4e-3."""

    vanishing_floor: float = 1e-7
    """Absolute floor on the root-mean-square gradient element of the first layer's weight (SageMaker
    Debugger's ``VanishingGradient`` default threshold is 1e-7, on the mean absolute gradient; re-checked)."""

    vanishing_floor_ratio: float = 0.1
    """The absolute floor only counts where the first layer also gets this much less than the last: when every
    layer's gradient is tiny the loss has converged (nothing left to learn), which is not vanishing."""

    # ---------------------------------------------------------------- exploding gradients
    exploding_ratio: float = 1e3
    """Depth ratio above which gradients explode towards the input: the first layer's relative gradient over
    the last one's (the mirror of ``vanishing_ratio``, AUTOTRAINER's symmetric criterion)."""

    exploding_growth: float = 1e2
    """Growth of the total gradient norm over its early median that counts as exploding. Healthy runs in the
    zoo grow by at most ~10× (gradient norms often rise once the loss leaves its initial plateau); a hundredfold
    rise is an explosion even when every layer grows alike (depth ratio ≈ 1)."""

    exploding_activation_growth: float = 1e2
    """Growth of a layer's activation standard deviation over its early value that counts as exploding
    activations (same reasoning as ``exploding_growth``)."""

    exploding_activation_floor: float = 10.0
    """Activation growth (over time or across depth) only counts where the grown standard deviation is also
    above this: a layer initialized at zero (std ≈ 0) that grows to a normal std ≈ 1 is not exploding.
    Standardized signals have std ≈ 1 (Glorot & Bengio 2010)."""

    exploding_relative_grad: float = 1e2
    """Total gradient norm over total weight norm above which the gradient is huge in absolute terms: even a
    learning rate of 1e-2 would then move the weights by more than their own size per step. Catches models
    whose every layer's gradient is huge from the first step (ratio ≈ 1, no growth)."""

    exploding_persistence: float = 0.2
    """Fraction of the steps after the early window on which growth must hold. Lower than ``persistence``
    because an explosion is usually the end of a run (it diverges or is stopped)."""

    signal_depth_factor: float = 1e2
    """Change of the activation standard deviation from the first to the last weighted layer (at one step)
    that counts as the forward signal exploding (above) or collapsing (below its inverse). Glorot & Bengio 2010
    and He et al. 2015 show the product of per-layer variance factors compounds with depth; 100× in std is
    far outside what a correctly initialized net shows (≈1×)."""

    # ---------------------------------------------------------------- dead ReLU
    dead_fraction: float = 0.5
    """Fraction of a ReLU layer's units that never fired over the dead window (median over the last part of
    training) at which the layer is flagged as a warning. SageMaker Debugger's ``DeadRelu`` default
    ``threshold_layer`` is 50 % (re-checked); units here are judged per feature/channel over a window, not per
    element, so normal ~50 % elementwise sparsity of healthy ReLU nets does not count. Kept at 50 % on the zoo's
    evidence: healthy runs' layers stay at ≤ 9 % dead (median over the tail), runs killed by a negative bias or a
    too-high learning rate reach 89–100 %; the runs near the line (52–56 %: raw-feature wine, zero init, an
    unstable CNN, a 20-layer stuck ReLU net) are broken runs where losing half a layer is a real finding."""

    dead_fraction_error: float = 0.9
    """Dead fraction at which the finding is an error: the layer has almost no capacity left (AUTOTRAINER
    flags dying ReLU from 70 % as we recall it, not re-checked; 90 % leaves a layer barely alive)."""

    # ---------------------------------------------------------------- saturation
    saturation_fraction: float = 0.5
    """Fraction of a sigmoid/tanh layer's units whose mean normalized derivative is below
    ``header.saturation_derivative`` at which the layer is saturated (SageMaker Debugger's
    ``SaturatedActivation`` default ``threshold_layer``, 50 %; re-checked)."""

    saturation_dmean: float = 0.3
    """A layer whose mean normalized derivative (``dmean``: 1 = linear regime, 0 = pinned) over the last part
    of training is below this is saturated even when few single units are: it passes less than a third of the
    gradient a linear unit would (tanh pre-activations with std ≳ 3). Healthy tanh/sigmoid layers in the zoo
    stay at 0.44–0.98; sigmoid layers initialized N(0, 1) sit at ≈ 0.2 (gradscope zoo measurements)."""

    saturation_fraction_error: float = 0.9
    """Saturated fraction at which saturation is an error: nearly no gradient passes the layer."""

    # ---------------------------------------------------------------- divergence
    divergence_loss_growth: float = 10.0
    """Training loss at the end (median of the last part) this many times its starting value counts as
    diverging even while it is still finite: a healthy run ends below where it started."""

    # ---------------------------------------------------------------- over/underfitting
    avoidable_bias: float = 0.05
    """Avoidable bias (train error − baseline error) above which bias is high: 5 percentage points. With the
    standard worked example (baseline 0.5 %), 1 % train error is low bias and 15 % is high."""

    variance: float = 0.05
    """Variance (validation error − train error) above which variance is high: 5 percentage points. In the
    standard worked example a 1-point gap is low variance and a 10-point gap is high."""

    variance_relative: float = 0.2
    """…and the gap must also be at least this fraction of the validation error: when both errors sit near
    chance (58 % vs 64 % on a small validation set) a few points of gap are sampling noise, not variance. The
    worked example's high-variance rows have gaps of 50–90 % of the validation error."""

    bias_chance_fraction: float = 0.5
    """Without a baseline error the true floor is unknown (some tasks cannot be learned to 0 % error), so
    high bias is only a warning when the train error is at least this fraction of the chance-level error
    1 − 1/C (C = the classifier's outputs; a model that halves nothing of guessing has learned little);
    otherwise an info finding. Pass ``--baseline-error`` for the full analysis."""

    avoidable_bias_no_baseline: float = 0.3
    """The same bound in absolute terms when the number of classes is unknown (no classifier head): train
    error above 30 points with no baseline is a warning."""

    fit_min_points: int = 3
    """Loss evaluations a loss-curve verdict needs (a trend needs at least three points)."""

    overfit_val_rise: float = 0.1
    """Relative rise of the validation loss above its minimum that counts as overfitting (10 %), required both
    of the last value and of the median after the minimum, so a single noisy evaluation does not count."""

    overfit_min_after: int = 2
    """Validation evaluations needed after the best one before a rise is believed (early-stopping patience)."""

    overfit_train_drop: float = 0.02
    """The training loss must have kept falling by at least this fraction after the best validation step;
    if both rise, that is divergence or instability, not overfitting."""

    underfit_min_improvement: float = 0.1
    """A training loss that improved by less than this fraction from its first to its final value is flat."""

    underfit_gap: float = 0.1
    """Train and validation loss within this relative gap count as "train ≈ validation"."""

    underfit_chance_fraction: float = 0.8
    """A flat training loss at or above this fraction of the chance-level cross-entropy log(C) (C = the final
    layer's outputs) is "high": the classifier barely beats guessing."""

    # ---------------------------------------------------------------- init
    poor_init_factor: float = 10.0
    """Initial weight variance more than this factor away from the variance the following activation needs
    (He 2/fan_in, Glorot 2/(fan_in+fan_out), LeCun 1/fan_in) counts as poor. SageMaker Debugger's
    ``PoorWeightInitialization`` default ``threshold`` is 10 too (re-checked; there it bounds the ratio of the
    smallest to the largest per-layer variance, a different quantity with the same order of tolerance).
    PyTorch's default 1/(3·fan_in) is 6× below He and
    stays inside the band on purpose: it trains fine on shallow nets."""

    init_loss_chance_factor: float = 2.0
    """A classifier's (or language model's) earliest logged training loss at or above this many times the
    chance-level cross-entropy log(C) shows a mis-scaled init (counted only with a layer past
    ``poor_init_factor``). A well-initialized classifier starts at ≈ log(C) (Karpathy, "A Recipe for Training
    Neural Networks", 2019: "verify loss @ init"). Logits of std σ give ≈ log(C) + σ²/2, so 2·log(C) needs
    σ ≈ √(2·log C) — the top of C logits then ≈ 2·log(C) above a typical one, the true class given on average
    (geometric mean) 1/C², C times less than a uniform guess: confidently wrong from the first step. Logits of
    unit std (a reasonable head) start at ≈ log(C) + ½. The same factor as ``classifier_start_band``, beyond
    which a start is not "near chance"."""

    # ---------------------------------------------------------------- input
    input_mean_std_ratio: float = 3.0
    """|mean| / std of the input above which it is far from centred. Images scaled to [0, 1] give ≈ 0.4–2 and
    train fine; a feature offset by several standard deviations slows training (Glorot & Bengio's variance
    argument assumes zero-mean, unit-variance inputs)."""

    input_std_max: float = 10.0
    """Input (or per-feature) standard deviation above which the input is not standardized (raw 0–255 pixels
    have std ≈ 60–80; standardized data has 1)."""

    input_mean_max: float = 10.0
    """Largest per-feature |mean| of a standardized input before it counts as uncentred."""

    input_feature_spread: float = 1e3
    """Ratio of the largest to the smallest (non-zero) per-feature standard deviation above which feature
    scales span orders of magnitude (raw tabular data such as sklearn's breast-cancer set spans ~1e5)."""

    # ---------------------------------------------------------------- unstable loss
    spike_rtol: float = 2.0
    """A loss spike is a value above (1 + spike_rtol) × the rolling median of the values before it: Lightning's
    ``SpikeDetection`` default relative tolerance is 2 (as documented there; not re-checked)."""

    spike_z: float = 6.0
    """…and at least this many robust standard deviations (1.4826 × MAD of the log-loss residuals) above it,
    so the natural mini-batch noise of a small-batch run is not a spike."""

    spike_window: int = 20
    """Values in the rolling median that a spike is compared with."""

    spike_min_count: int = 2
    """Spikes needed for a warning; fewer gives an info finding."""

    loss_log_floor: float = 1e-3
    """Loss values below this fraction of the series' median are raised to it before taking logs for the spike
    and oscillation tests: a mini-batch with loss exactly 0 is not −∞."""

    unstable_rebound: float = 2.0
    """A training loss whose rolling median (over ``spike_window`` values) climbs back to this many times its
    lowest rolling median has lost its progress: the optimizer was thrown out of the basin it had reached.
    Healthy runs' smoothed training loss only falls or plateaus; a learning rate too high for SGD with
    momentum doubles it and more (gradscope zoo measurements)."""

    oscillation_jitter: float = 0.7
    """Median |Δ log loss| between consecutive logged values (in the last part of training) above which the
    loss oscillates: a factor of about 2 from one value to the next (healthy mini-batch noise in the zoo is
    ≈ 0.05–0.3)."""

    oscillation_min_progress: float = 0.05
    """Oscillation only counts while the loss makes less than this relative progress over the last part."""

    # ---------------------------------------------------------------- learning rate
    lr_ratio_low: float = 1e-5
    """Median update/weight ratio ||Δw||/||w|| below which the learning rate is too low: 100× below the
    ~1e-3 heuristic (Karpathy, CS231n; not re-checked). Weights then move by 0.1 % in a hundred steps."""

    lr_ratio_high: float = 1e-1
    """Median update/weight ratio above which the learning rate is too high for SGD-like optimizers: 100×
    above the ~1e-3 heuristic; weights change by 10 % every step."""

    lr_ratio_high_adaptive: float = 3e-1
    """The same bound for Adam-like optimizers: their per-element step is ≈ lr regardless of the gradient's
    scale, so the ratio is ≈ lr / rms(w), typically 1e-3..1e-1 for lr = 1e-3 on small layers."""

    lr_weight_growth: float = 10.0
    """Growth of the weight norms over the run (median over weighted layers of max ||W_t||/||W_0||) that marks a
    learning rate too high even when the update ratio looks normal later (weights blown up make the ratio
    small). Healthy zoo runs grow their weights by at most ≈ 4.5×; Adam at lr 0.5 grows them 11–23×
    (gradscope zoo measurements)."""

    lr_target_ratio: float = 1e-3
    """Update/weight ratio a suggested learning rate aims at for SGD-like optimizers (Karpathy, CS231n; not
    re-checked)."""

    lr_target_ratio_adaptive: float = 1e-2
    """Update/weight ratio a suggested learning rate aims at for Adam-like optimizers (what Adam's default
    lr = 1e-3 gives on the zoo's models)."""

    # ---------------------------------------------------------------- fixes
    clip_percentile: float = 90.0
    """Percentile of the healthy early total gradient norms used as the suggested ``clip_grad_norm_``
    ``max_norm``: clips the outliers and leaves normal steps alone."""

    fix_lr_backoff: float = 0.1
    """Factor a fix multiplies the learning rate by against instability (divergence, exploding gradients, dead
    units, spikes): one decade, because learning rates are searched on a log scale (Bengio, "Practical
    recommendations for gradient-based training of deep architectures", 2012)."""

    fix_weight_decay_sgd: float = 5e-4
    """Weight decay an overfitting fix suggests for SGD-like optimizers when none is set: the value of the
    standard ResNet/CIFAR recipe (He et al., "Deep residual learning for image recognition", CVPR 2016)."""

    fix_weight_decay_adamw: float = 1e-2
    """Weight decay an overfitting fix suggests for Adam-like optimizers when none is set: PyTorch's
    ``torch.optim.AdamW`` default (decoupled weight decay, Loshchilov & Hutter, ICLR 2019)."""

    fix_weight_decay_step_up: float = 10.0
    """When weight decay is already set, the overfitting fix raises it by this factor (one decade, searched on
    a log scale like the learning rate)."""

    fix_dropout_p: float = 0.3
    """Dropout probability an overfitting fix suggests after hidden layers: inside the usual 0.2–0.5 range
    (Srivastava et al., "Dropout", JMLR 2014, used 0.5 for hidden units and less near the input)."""

    fix_width_factor: int = 2
    """Width multiplier a capacity fix suggests for a layer: doubled when the model underfits, halved when it
    overfits (one step on a log scale of widths)."""

    fix_max_layers: int = 4
    """A fix's summary names at most this many layers and says how many more: a longer list is unreadable,
    and the first layers named are the worst (rules list them first)."""

    clip_crush_ratio: float = 1e-2
    """Median ratio of the gradient norm the optimizer steps with to the one backward produced (recorded with
    ``optimizer=``) below which clipping, not the learning rate, is why the updates are tiny: a threshold that
    binds that hard throws away 99% of every step. Clipping the loss-scaled gradients of an AMP loop without
    ``scaler.unscale_(optimizer)`` first gives about 1/scale (2^-16 with the default GradScaler) — the
    documented order is unscale, then clip (PyTorch AMP examples, "Gradient clipping")."""

    fix_max_code_layers: int = 16
    """A fix's snippet edits at most this many layers (a line or a few each) and names the ones it leaves
    out: a fix that normalizes 4 of 12 affected layers leaves the problem in the other 8 (issue 11), while a
    200-line snippet is no longer something a user pastes. 16 covers every finding of the zoo."""

    fix_transformer_init_std: float = 0.02
    """Standard deviation of the N(0, σ²) weight initialization a fix suggests for a transformer's layers and
    embeddings: GPT-2's (Radford et al. 2019; nanoGPT's ``_init_weights``); the projections that write into the
    residual stream get σ/√(2·n_layer)."""

    fix_warmup_fraction: float = 0.05
    """Share of the run's steps a learning-rate warmup spans when a fix proposes one for a transformer (a
    linear ramp from 0, as in "Attention is all you need" and GPT-2's recipes; a few percent of training)."""

    # ---------------------------------------------------------------- issue 11: legitimate recipes, misses
    input_inside_rms: float = 3.0
    """Largest estimated root-mean-square of what the first Linear/convolution receives at which a model whose
    raw input is large is taken to standardize it inside ``forward()``. A standardized input has RMS 1 (Glorot &
    Bengio 2010's unit-variance assumption); the estimate from random initial weights scatters by a factor of
    about 2 on narrow layers. Checked on the gradscope zoo: raw wine, breast-cancer and diabetes inputs give
    estimates of 97–233, standardized ones 0.9–1.1."""

    classifier_start_band: float = 2.0
    """Without a logged accuracy, a head with C ≥ 2 outputs is taken for a classifier only when the first
    training losses (the early window) sit within this factor of the chance-level cross-entropy log(C): an
    untrained softmax classifier starts at log(C) (uniform predictions), while an MSE loss over C regression
    targets (a VAE decoder, a multi-target regressor) has the targets' scale. A factor of 2 keeps classifiers
    with a moderately mis-scaled head; a badly initialized classifier far from log(C) usually logs accuracy."""

    amp_log2_tol: float = 0.01
    """How close log2(backward norm / optimizer-step norm) must be to an integer k ≥ 1 for the ratio to be read
    as an AMP loss scale 2^k (``GradScaler`` scales are powers of two: PyTorch's ``torch.amp.GradScaler``
    starts at 2^16 and halves or doubles). Float32 norms agree to ~1e-6 in log2; a user's clipping ratio lands
    this close to an integer by chance on about 2 % of steps, far below ``persistence``."""

    never_beat_chance_fraction: float = 0.95
    """A classifier whose best validation loss stays at or above this fraction of the chance-level loss log(C)
    never beat an untrained model on unseen data; with a falling training loss it memorizes (random or
    misaligned labels, a leaky split: Zhang et al., "Understanding deep learning requires rethinking
    generalization", ICLR 2017, fit random labels to zero training error). 0.95 leaves room for the noise of a
    small validation set around log(C); a model that learns anything transferable goes well below it."""

    lr_slow_max_drop: float = 0.3
    """A learning rate inside the update/weight band but below the family's typical ratio is called too low
    only when the training loss fell by less than this fraction of its early level over the whole run while
    still falling steadily: a well-set rate takes a loss from chance level down by far more within a few epochs
    (the healthy zoo classifiers drop by well over half); 30 % leaves room for hard tasks."""

    lr_slow_ratio_fraction: float = 0.5
    """The slow-progress test for a too-low learning rate applies only when the median update/weight ratio is
    below this fraction of the family's typical ratio (``lr_target_ratio``/``lr_target_ratio_adaptive``): steps
    clearly smaller than usual. Checked on the gradscope zoo: a loss creeping down at its noise floor (a noisy
    multi-target regression with Adam, ratio 0.69× typical) must not be called a learning-rate problem, while
    runs at 100–500× too low a rate sit at 0.06–0.12×. Healthy runs reach down to 0.15× but make real
    progress, which the loss test requires to be absent."""

    lr_trend_min_points: int = 5
    """Fewest logged training losses for the trend test: with four values even a perfectly monotone series
    reaches a one-sided Mann–Kendall p of only 0.042 (Kendall's exact distribution), with five 0.008."""

    lr_trend_p: float = 0.05
    """Significance of the one-sided Mann–Kendall test (Kendall's tau of loss against step) for "the loss is
    still falling": the conventional 5 % level (Mann 1945)."""

    lr_trend_confidence: float = 0.95
    """Confidence of the Theil–Sen slope interval (Sen 1968) that must lie below zero for the loss to count as
    still falling; ``scipy.stats.theilslopes``' default."""

    # ---------------------------------------------------------------- issue 12: training-loop bugs
    not_updated_min_steps: int = 5
    """Judged steps on which a parameter must have a gradient and an update/weight ratio of exactly 0 (while other
    parameters moved) before ``param_not_updated`` fires. An optimizer that holds a parameter with a nonzero
    gradient changes it on every step it takes (weight decay and momentum only add to that), so one such step is
    already telling; five keep a few odd steps (a step whose update rounds to zero) from deciding alone."""

    not_updated_min_expected: float = 1e-5
    """Smallest update/weight ratio a parameter would have had in the optimizer (estimated from the other
    parameters' step size on the same step) for its zero update to count against it: 100× below the ~1e-3 of
    healthy training (Karpathy, CS231n) and ~80× above float32's relative resolution (2⁻²³ ≈ 1.2e-7), where an
    update smaller than the weight's last digit is lost to rounding."""

    not_updated_skip_steps: int = 3
    """Without a recorded learning rate (no ``optimizer=``), the first recorded steps ``param_not_updated`` leaves
    out: a learning-rate warm-up may start at exactly 0 (``LambdaLR`` with factor ``step / warmup``), which gradscope
    cannot see then. Warm-ups that begin at 0 reach a nonzero rate on their second step."""

    no_gradient_min_steps: int = 5
    """Recorded steps on which a layer must have run in the training forward pass, with no gradient reaching it
    or its parameters on any of them, before ``no_gradient`` fires: backpropagation reaches every layer on the
    loss path on every step, so a few steps suffice; five keep a layer that runs only at the start out."""

    plateau_window: float = 0.4
    """Last fraction of the logged loss values ``lr_plateau`` judges for flatness: long enough that a schedule
    would have acted (``ReduceLROnPlateau``'s default patience is 10 evaluations of a typical 25–100), short
    enough to leave the earlier descent out."""

    plateau_min_points: int = 5
    """Fewest logged loss values in the window: a Theil–Sen confidence interval needs a handful of points
    (``scipy.stats.theilslopes`` computes it from the pairwise slopes; with 5 points there are 10)."""

    plateau_flat_improvement: float = 0.02
    """Most the loss may change over the window (the Theil–Sen estimate, relative to its median there), either
    way, for it to count as flat, once the confidence interval shows no significant improvement. A softmax
    regression on noisy labels stuck at SGD's noise floor (a tenfold lower learning rate cuts its loss by a third)
    changes by about 1 % over its last 40 % of epochs; the closest healthy zoo run, a diabetes regression near its
    noise floor, still improves by 2.9 % (gradscope zoo measurements). A tight band: a loss that bounces by a few
    percent without trend is missed (see the zoo's known misses)."""

    plateau_max_points: int = 200
    """A window with more logged values is averaged into this many consecutive means before the Theil–Sen fit:
    its pairwise slopes grow with the square of the points (200 points: 19,900 slopes)."""

    plateau_confidence: float = 0.95
    """Confidence level of the Theil–Sen slope interval (``scipy.stats.theilslopes``'s default)."""

    plateau_earlier_drop: float = 0.1
    """Fall of the loss from its first logged value to the window's median that says it *stopped* improving: a loss
    flat from the start is stuck (learning rate far off, vanishing gradients, underfitting) and a schedule is not
    the remedy. The zoo's stuck runs fall by 0–5 %; a softmax regression on noisy labels that plateaus at SGD's
    noise floor falls by 12–20 % first (one epoch does most of it; gradscope zoo measurements)."""

    plateau_converged_error: float = 0.01
    """Training error at or below which the run has converged (fits the training set): a flat loss there is the
    end of training, not a plateau."""

    plateau_converged_loss: float = 0.05
    """Without a logged training error: the loss at or below this fraction of its first logged value counts as
    converged (a cross-entropy from log(10) ≈ 2.3 down to 0.1)."""

    plateau_patience_fraction: float = 0.5
    """The ``ReduceLROnPlateau`` patience a fix suggests, as a fraction of the evaluations the loss was flat for:
    half, so the scheduler would have lowered the learning rate within the plateau this run had."""

    loop_min_steps: int = 3
    """Steps the ``loop`` records must cover (and, for ``grad_not_zeroed``, backwards checked right after an
    optimizer step) before a loop-habit rule judges: like ``min_recorded_steps``, one or two steps show no
    habit."""

    grad_not_zeroed_fraction: float = 0.5
    """Fraction of the checked backwards (the first one after each optimizer step) that found ``.grad`` still the
    unmodified tensor that step used, from which ``grad_not_zeroed`` fires: "most steps". The check cannot accuse
    wrongly (``zero_grad()`` sets ``.grad`` to None or zeroes it in place, either way it is no longer that
    tensor), so the fraction only sets how habitual the miss must be: a loop that never zeroes is at 100 %
    (every step after the first), gradient accumulation that zeroes after each optimizer step at 0 % (gradscope zoo)."""

    eval_mode_fraction: float = 0.5
    """Fraction of the training steps the ``loop`` records cover whose forward ran in eval mode (and was followed
    by a backward), from which ``eval_mode_training`` fires: "most steps". A loop that calls ``model.eval()`` for
    validation and never ``model.train()`` again trains in eval mode from its second epoch on (88 % of the steps
    over 8 epochs); a correct loop has 0 % (gradscope zoo)."""

    train_mode_eval_min_forwards: int = 3
    """Root forward passes in train mode with grad disabled (``torch.no_grad()``/``inference_mode`` without
    ``model.eval()``) from which ``train_mode_eval`` judges: a validation forgotten in train mode repeats every
    evaluation (once per epoch at least), while one or two such passes can be a one-off (a summary, a shape
    check). Like ``min_recorded_steps``, three show a habit."""

    train_mode_eval_repeat_fraction: float = 0.5
    """Fraction of those passes fed the very input tensor of the pass before, from which they read as Monte Carlo
    sampling on purpose (the same batch through dropout many times: T − 1 of T passes repeat) and
    ``train_mode_eval`` reports at info only; a validation loop feeds a new batch each pass (0 % repeat)."""

    probs_sum_tolerance: float = 0.01
    """Largest |row sum − 1| of the model output (rows summed in fp64 on the device) that still reads as a row of
    probabilities for ``probabilities_as_logits``. A softmax in fp32 sums to 1 within ~C·6e-8 (1e-7 measured on
    10 classes, gradscope zoo); in bf16/fp16 each entry is rounded to 2^-9 relative, so the sum within ~0.004.
    Logits (any sign, any sum) that are all ≥ 0 and sum to 1 within 1 % on every measured step do not happen by
    chance."""

    probs_fraction: float = 0.9
    """Fraction of the measured steps (at least ``loop_min_steps``) whose model output was non-negative rows
    summing to 1, from which ``probabilities_as_logits`` judges: "while it trains". A final softmax makes it
    100 %; logits 0 %."""

    probs_floor_slack: float = 0.01
    """Relative slack under the cross-entropy-of-probabilities floor log(C + e − 1) − 1 (docs/theory.md section 12): a
    logged loss whose minimum is at or above floor × (1 − slack) never went below what ``nn.CrossEntropyLoss``
    on probabilities can reach, and ``probabilities_as_logits`` warns. Each sample's loss is ≥ the floor, so is
    every batch mean; the slack only absorbs the float32 rounding of a logged mean. An ``NLLLoss(log p)`` model
    that learns goes below it (0.1 on digits vs a floor of 1.46, gradscope zoo)."""

    probs_floor_near: float = 0.5
    """How far, as a fraction of the way from chance (log C, the loss of uniform probabilities) down to that
    floor, the logged loss must have come for ``probabilities_as_logits`` to warn: a loss that fell most of the
    way and stopped at the floor is the signature of ``nn.CrossEntropyLoss`` on probabilities. A loss still near
    chance (a model that learned nothing yet, whatever its loss) gets the conditional info finding instead."""

    # ---------------------------------------------------------------- issue 11.4: confidence from evidence
    confidence_floor: float = 0.5
    """Confidence of a finding whose evidence sits exactly at its thresholds, with the least data its rule
    accepts (gradscope/judge/confidence.py): a threshold is where a rule is undecided, so a verdict there is as
    likely right as wrong. The evidence (margin past the thresholds, support over steps, agreeing signals) takes
    the confidence from here towards 1; an info finding worded as a question ("on purpose?", "if these go into
    CrossEntropyLoss") stays below it."""

    confidence_support_level: float = 0.95
    """One-sided level of the Wilson score lower bound (Wilson 1927) on the fraction of recorded steps (layers,
    evaluations) on which a finding's condition held: 3 of 3 steps give 0.53, 30 of 30 give 0.92, 300 of 300
    give 0.99, so a short run is less certain than a long one with the same fraction. 95 %, the level of the
    other intervals here (``plateau_confidence``, ``lr_trend_confidence``)."""

    confidence_no_lr_factor: float = 0.8
    """Factor on ``param_not_updated``'s confidence when the learning rate is not recorded (no ``optimizer=``):
    then a param group frozen on purpose by a learning rate of 0 looks exactly like a parameter missing from the
    optimizer, and only the first ``not_updated_skip_steps`` steps are left out for a warm-up. A fifth off: the
    finding still stands on every judged step, but one explanation cannot be ruled out."""

    # ---------------------------------------------------------------- issue 11: consequences reported as causes
    lr_spike_factor: float = 10.0
    """How many times the run's median learning rate the recorded per-step rate must reach, on a few consecutive
    recorded steps with the base rate on both sides, to be a spike in the schedule (``learning_rate``): one
    decade, the step learning rates are searched by (Bengio 2012, as ``fix_lr_backoff``). The schedules people
    mean stay well inside it: a one-cycle policy peaks at a few times its median, cosine and warm restarts at
    about twice it, a warm-up or a step decay never rise above their base (docs/theory.md section 10); the zoo's ×100
    spikes (SGD 0.05 → 5, AdamW 1e-3 → 0.1) wreck the run within the spike, its ×2 bump trains normally."""

    lr_spike_max_fraction: float = 0.2
    """Largest share of the recorded steps a spike may cover: a spike is a few steps of a schedule that is
    otherwise at its base; a rate that stays high for longer is the schedule's base itself (judged from the
    update/weight ratios), and the median it is compared with must come from the steps outside it."""

    # ---------------------------------------------------------------- issue 11: learning-rate schedules
    lr_init_step_adaptive: float = 0.1
    """Peak learning rate of an Adam-like optimizer, as a multiple of the weights' initial scale (median over
    weighted layers of lr / initial std), from which ``learning_rate`` calls the rate too high when the run also
    shows damage (it underfits, units died, gradients exploded, it diverged). Adam moves each weight by about lr
    per step whatever the gradient's scale (its step is bounded by the step size: Kingma & Ba 2015, section 2.1),
    so lr / std is the update/weight ratio of the first steps: 10× the typical ``lr_target_ratio_adaptive``, one
    decade (as ``lr_spike_factor``). Not enough alone: the zoo's healthy char-GPT (nanoGPT's init std 0.02, lr
    3e-3 after a warm-up) reaches 0.22 and its healthy LSTM 0.1, while the ViT at a constant 3e-2 with no warm-up
    (0.29) and the bf16 MLP at a peak of 0.1 (2.0) damage their runs (gradscope zoo measurements)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Field name → its docstring (read from the source), for generated docs."""
        return dict(_field_docs())

    def replace(self, **changes: Any) -> Thresholds:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, base: Thresholds | None = None) -> Thresholds:
        """Thresholds from ``{"dead_fraction": 0.8, ...}`` (values may be strings, as from a CLI or config).

        Unknown names and values that cannot be converted raise ``GradscopeError`` naming the field."""
        base = base if base is not None else cls()
        types = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in mapping.items():
            name = key.replace("-", "_")
            if name not in types:
                raise GradscopeError(f"unknown threshold {key!r}; known: {', '.join(sorted(types))}")
            want_int = types[name] in (int, "int")
            try:
                num = float(value)
                if want_int:
                    if num != int(num):
                        raise ValueError
                    changes[name] = int(num)
                else:
                    changes[name] = num
            except (TypeError, ValueError):
                kind = "an integer" if want_int else "a number"
                raise GradscopeError(f"threshold {key!r} must be {kind}, got {value!r}") from None
        return replace(base, **changes)


def _field_docs() -> list[tuple[str, str]]:
    """Parse this module's source for the string literal that follows each field."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Thresholds))
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef)
    out: list[tuple[str, str]] = []
    body = cls.body
    for node, nxt in zip(body, [*body[1:], None], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            out.append((node.target.id, inspect.cleandoc(nxt.value.value)))
    return out
