"""Lightning: ``trainer = Trainer(callbacks=[GradscopeCallback()])`` and the usual ``gradscope report``.

What it does: attaches ``gradscope.watch`` to the LightningModule when fitting starts, with the trainer's
optimizer (so a step is an optimizer step: ``accumulate_grad_batches`` counts as one) and, under 16-bit
mixed precision, Lightning's GradScaler (so gradient norms are recorded unscaled and scaler-skipped steps are
labelled). Gradient norms are read at the end of backward, before Lightning clips; the gradients the
optimizer used (after ``on_before_optimizer_step`` and Lightning's clipping) are read after the step, which
is how the report learns that ``gradient_clip_val`` is active. At the end of each training and validation
epoch the canonical metrics (``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``, ...) are copied
from ``trainer.callback_metrics``. The log is closed when fitting ends or raises.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from gradscope.integrations import missing

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as _e:  # pragma: no cover - exercised where lightning is absent
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef,assignment]
    except ImportError:
        raise missing("Lightning", "lightning", _e) from None

import gradscope
from gradscope.store.run import CANONICAL_METRICS

_ALIASES = {"train_loss": ("train_loss_epoch", "train_loss", "loss"), "val_loss": ("val_loss_epoch", "val_loss")}


class GradscopeCallback(Callback):
    """Watch the LightningModule of a ``Trainer.fit`` with gradscope.

    ``logdir``: where the log goes (default ``<trainer.default_root_dir>/gradscope``); every other keyword
    goes to :func:`gradscope.watch` (``every``, ``layers``, ``tensorboard``, ...).
    """

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **watch_kwargs: Any) -> None:
        super().__init__()
        self.logdir = logdir
        self.watch_kwargs = watch_kwargs
        self.scope: gradscope.Watch | None = None

    # -------------------------------------------------------------------------------------------- lifecycle
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scope is not None and not self.scope.closed:
            self.scope.close()
        logdir = self.logdir if self.logdir is not None else Path(trainer.default_root_dir) / "gradscope"
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        kwargs: dict[str, Any] = {"optimizer": optimizers[0] if len(optimizers) == 1 else None, "scaler": scaler}
        kwargs.update(self.watch_kwargs)
        self.scope = gradscope.watch(pl_module, logdir, **kwargs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    # ------------------------------------------------------------------------------- the training forward
    # Lightning calls ``training_step``, not the LightningModule's ``forward``, so the root forward hooks that
    # find training steps in plain PyTorch may never fire. The window from batch start to ``on_before_backward``
    # is the training forward instead (when ``training_step`` does call ``self(x)`` the hooks see that the
    # window is already open and the result is the same). ``StepClock.begin_forward``/``end_forward`` are the
    # public API for exactly this.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.scope is not None and not self.scope.closed:
            self.scope.clock.begin_forward(pl_module, (batch,))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        if self.scope is not None and not self.scope.closed:
            self.scope.clock.end_forward(pl_module, loss)

    # ------------------------------------------------------------------------------------------- metrics
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "train_")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, "val_")

    def _log(self, trainer: pl.Trainer, prefix: str) -> None:
        if self.scope is None or self.scope.closed:
            return
        found = dict(trainer.callback_metrics)
        values: dict[str, float] = {}
        for name in CANONICAL_METRICS:
            if not name.startswith(prefix):
                continue
            for key in _ALIASES.get(name, (f"{name}_epoch", name)):
                if key in found:
                    v = float(found[key])
                    if math.isfinite(v) or name.endswith("loss"):
                        values[name] = v
                    break
        if values:
            self.scope.log(step=None, **values)

    def _close(self) -> None:
        if self.scope is not None:
            self.scope.close()
