"""Zoo cases where one fault produces several symptoms: the report must name the cause, not the company.

Issue 11: a learning-rate spike (the schedule returns ×100 for a few steps, then the base rate again) and a NaN
written into one weight mid-training each set off a cascade — exploding gradients, a loss that spikes or turns
NaN, dead units. The cause must lead the report (``learning_rate`` naming the spike's steps and factor and
editing the schedule; ``divergence`` for the NaN weight) and the rest must be its consequences (``caused_by``)
or not reported when they are artefacts of the NaN. tests/judge/test_consequences.py checks the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from zoo.cases import (
    C,
    DigitsCNN,
    K,
    SeqNet,
    TokenTransformer,
    case,
    digits,
    fit,
    mlp,
    sine_sequences,
    token_sequences,
)

Scheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def lr_spike(start: int, length: int, factor: float) -> Scheduler:
    """A ``LambdaLR`` whose factor is ``factor`` on optimizer steps ``start`` … ``start + length − 1`` and 1
    elsewhere: the base learning rate, with a spike a buggy schedule (a mis-indexed warm restart, a
    ``lr_lambda`` that multiplies where it should divide) puts in it."""
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: factor if start <= s < start + length else 1.0)


class NaNAt(torch.optim.lr_scheduler.LambdaLR):
    """Leaves the learning rate alone and, after optimizer step ``at``, writes NaN into the first element of
    ``weight`` (``with torch.no_grad(): w[0, 0] = float('nan')``): a corrupted update or checkpoint. It rides on
    the zoo loop's ``scheduler=`` hook, which runs right after every optimizer step."""

    def __init__(self, opt: torch.optim.Optimizer, weight: torch.Tensor, at: int) -> None:
        self.weight, self.at = weight, at
        super().__init__(opt, lambda s: 1.0)

    def step(self, epoch: int | None = None) -> None:
        super().step()
        if self.last_epoch == self.at:
            with torch.no_grad():
                self.weight.view(-1)[0] = float("nan")


def nan_at(weight: torch.Tensor, at: int) -> Scheduler:
    return lambda opt: NaNAt(opt, weight, at)


# ============================================================================ calibration: consequences
@case("conseq_lr_spike_mlp_sgdm", "ReLU MLP 64-128-64-10 on digits, SGD 0.05 + momentum 0.9 whose LambdaLR "
      "returns ×100 on optimizer steps 60–67 (lr 5) and 1 elsewhere: the spike throws the weights out of range; "
      "whatever follows (a NaN loss, exploding gradients, dead units) is its consequence.",
      must=(C.LEARNING_RATE,), may=(C.DIVERGENCE, C.UNSTABLE_LOSS, C.EXPLODING_GRADIENTS, C.DEAD_RELU,
                                     C.UNDERFITTING, C.VANISHING_GRADIENTS, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="MLP", optimizer="SGD+momentum", data="digits")
def _conseq_lr_spike_mlp(logdir: Path) -> None:
    m = mlp([64, 128, 64, 10])
    fit(m, torch.optim.SGD(m.parameters(), 0.05, momentum=0.9), digits(seed=80), logdir, epochs=6, batch=64,
        seed=80, scheduler=lr_spike(60, 8, 100.0))


@case("conseq_nan_weight_mlp_adam", "ReLU MLP 64-128-64-10 on digits, Adam 1e-3, with NaN written into one "
      "element of the second layer's weight after optimizer step 50: the loss is NaN from then on. Divergence "
      "(a non-finite weight) leads; the NaN gradients it makes are not an explosion. A model whose weights are "
      "NaN predicts one class, so underfitting may fire too (as divergence's consequence; label corrected after "
      "the first run). Its fix label (clipping) was corrected to the search for the NaN's source (training_loop): "
      "a NaN weight passes through clip_grad_norm_ as NaN.",
      must=(C.DIVERGENCE,), may=(C.UNDERFITTING,),
      fixes={C.DIVERGENCE: (K.TRAINING_LOOP,)},
      arch="MLP", optimizer="Adam", data="digits")
def _conseq_nan_weight_mlp(logdir: Path) -> None:
    m = mlp([64, 128, 64, 10])
    fit(m, torch.optim.Adam(m.parameters(), 1e-3), digits(seed=81), logdir, epochs=5, batch=64, seed=81,
        scheduler=nan_at(m[2].weight, 50))


@case("conseq_lr_spike_transformer_adamw", "2-layer TransformerEncoder counting tokens, AdamW 1e-3 whose LambdaLR "
      "returns ×100 on optimizer steps 40–49 (lr 0.1): the attention weights are thrown around and the loss "
      "jumps; the base rate is fine before and after.",
      must=(C.LEARNING_RATE,), may=(C.DIVERGENCE, C.UNSTABLE_LOSS, C.EXPLODING_GRADIENTS, C.UNDERFITTING,
                                     C.VANISHING_GRADIENTS, C.DEAD_RELU, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="Transformer", optimizer="AdamW", data="synthetic tokens")
def _conseq_lr_spike_transformer(logdir: Path) -> None:
    m = TokenTransformer(10, 12)
    fit(m, torch.optim.AdamW(m.parameters(), 1e-3, weight_decay=0.01), token_sequences(seed=82), logdir,
        epochs=6, batch=32, seed=82, scheduler=lr_spike(40, 10, 100.0))


@case("healthy_conseq_lr_bump_mlp_sgdm", "The spike case's MLP and SGD 0.05 + momentum 0.9 with a ×2 bump on "
      "steps 60–67 (a schedule's restart, lr 0.1): no spike to report, nothing wrong.",
      arch="MLP", optimizer="SGD+momentum", data="digits")
def _healthy_conseq_lr_bump(logdir: Path) -> None:
    m = mlp([64, 128, 64, 10])
    fit(m, torch.optim.SGD(m.parameters(), 0.05, momentum=0.9), digits(seed=80), logdir, epochs=6, batch=64,
        seed=80, scheduler=lr_spike(60, 8, 2.0))


# ================================================= unseen hold-out (written before any run, never tuned on)
@case("conseq_unseen_lr_spike_gru_rmsprop", "GRU (hidden 24) on 1000 noisy sines, RMSprop 3e-3 whose LambdaLR "
      "returns ×50 on optimizer steps 70–79. Written before its first run: the spike is the cause; whatever "
      "else fires must follow from it.",
      must=(C.LEARNING_RATE,), may=(C.DIVERGENCE, C.UNSTABLE_LOSS, C.EXPLODING_GRADIENTS, C.UNDERFITTING,
                                     C.SATURATION, C.VANISHING_GRADIENTS, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      unseen=True, arch="GRU", optimizer="RMSprop", data="synthetic sines")
def _conseq_unseen_lr_spike_gru(logdir: Path) -> None:
    m = SeqNet(nn.GRU, 1, 24, 4)
    fit(m, torch.optim.RMSprop(m.parameters(), 3e-3), sine_sequences(1000, noise=0.2, seed=83), logdir,
        epochs=6, batch=32, seed=83, scheduler=lr_spike(70, 10, 50.0))


@case("conseq_unseen_nan_weight_cnn_sgdm", "Two-conv CNN on digit images, SGD 0.02 + momentum 0.9, with NaN "
      "written into one element of conv2's weight after optimizer step 40. Written before its first run: "
      "divergence must fire; a run that is NaN from step 40 on does not fit, so underfitting may fire too. Its "
      "fix label (clipping, what the rule offered then) was corrected after its first run to the search for the "
      "NaN's source (training_loop): clipping cannot stop a NaN weight, and the rule no longer offers it there.",
      must=(C.DIVERGENCE,), may=(C.UNDERFITTING,),
      fixes={C.DIVERGENCE: (K.TRAINING_LOOP,)},
      unseen=True, arch="CNN", optimizer="SGD+momentum", data="digits")
def _conseq_unseen_nan_weight_cnn(logdir: Path) -> None:
    m = DigitsCNN(8, 16)
    fit(m, torch.optim.SGD(m.parameters(), 0.02, momentum=0.9), digits(image=True, seed=84), logdir, epochs=5,
        batch=64, seed=84, scheduler=nan_at(m.conv2.weight, 40))
