"""Hugging Face: ``Trainer(..., callbacks=[GradscopeCallback()])`` and the usual ``gradscope report``.

What it does: attaches ``gradscope.watch`` to the model when training begins, with the Trainer's optimizer
(a step is an optimizer step: ``gradient_accumulation_steps`` counts as one). Gradient norms are read at the
end of backward, before the Trainer clips (``max_grad_norm``); the gradients the optimizer uses are read in
the optimizer's pre-step hook, right after ``on_pre_optimizer_step``, which is how the report learns that
clipping is active. ``logs['loss']`` and ``logs['eval_loss']`` (and ``eval_accuracy``) are logged as
``train_loss`` / ``val_loss`` (``val_acc``). The log is closed when training ends.

fp16 with a GradScaler (CUDA only): pass ``scaler=trainer.accelerator.scaler`` so gradient norms are recorded
unscaled; callbacks are not given the accelerator. bf16 needs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gradscope.integrations import missing

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as _e:  # pragma: no cover - exercised where transformers is absent
    raise missing("Hugging Face transformers", "huggingface", _e) from None

import gradscope

_NAMES = {"loss": "train_loss", "eval_loss": "val_loss", "eval_accuracy": "val_acc", "eval_acc": "val_acc"}


class GradscopeCallback(TrainerCallback):
    """Watch the model of a ``transformers.Trainer`` with gradscope.

    ``logdir``: where the log goes (default ``<args.output_dir>/gradscope``); every other keyword goes to
    :func:`gradscope.watch` (``every``, ``layers``, ``tensorboard``, ``scaler``, ...).
    """

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **watch_kwargs: Any) -> None:
        self.logdir = logdir
        self.watch_kwargs = watch_kwargs
        self.scope: gradscope.Watch | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.scope is not None and not self.scope.closed:
            self.scope.close()
        model = kwargs.get("model")
        if model is None:
            return
        opt = kwargs.get("optimizer")
        opt = getattr(opt, "optimizer", opt)   # accelerate wraps it; the hooks go on the torch optimizer
        if self.logdir is not None:
            logdir: str | os.PathLike[str] = self.logdir
        elif args.output_dir is not None:
            logdir = Path(args.output_dir) / "gradscope"
        else:   # Path(None) raised this before the check; transformers sets output_dir in __post_init__
            raise TypeError("gradscope: TrainingArguments.output_dir is None; pass GradscopeCallback(logdir=...)")
        options: dict[str, Any] = {"optimizer": opt}
        options.update(self.watch_kwargs)
        self.scope = gradscope.watch(model, logdir, **options)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        # Nothing to do here: the optimizer's own pre-step hook (registered by watch) runs right after this
        # event, on the gradients as clipped by the Trainer; kept so the order is documented in one place.
        return None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.scope is None or self.scope.closed or not logs:
            return
        values = {_NAMES[k]: float(v) for k, v in logs.items() if k in _NAMES and isinstance(v, (int, float))}
        if values:
            self.scope.log(step=None, **values)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.scope is not None:
            self.scope.close()
