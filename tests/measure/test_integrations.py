"""Lightning and Hugging Face: a real Trainer of each on CPU writes a gradscope log with steps and metrics."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.store.load import load_run


def test_missing_framework_gives_an_install_hint() -> None:
    # A fresh interpreter in which importing the framework fails, as on a machine without the extra.
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
            "try:\n    import gradscope.integrations.lightning\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'gradscope[lightning]'" in out
    code = code.replace("'lightning'] = None; sys.modules['pytorch_lightning'] = None",
                        "'transformers'] = None").replace("integrations.lightning", "integrations.huggingface")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'gradscope[huggingface]'" in out
    assert "lightning" not in importlib.import_module("gradscope.integrations").__dict__


def test_lightning_trainer(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradscope.integrations.lightning import GradscopeCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    cb = GradscopeCallback(tmp_path / "gs", every=2, tensorboard=False)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=2, accumulate_grad_batches=2,
                         gradient_clip_val=1e-3, accelerator="cpu", devices=1, enable_progress_bar=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[cb])
    trainer.fit(Module(), loader, loader)
    assert cb.scope is not None and cb.scope.closed
    run = load_run(tmp_path / "gs")
    assert run.completed and run.header.step_unit == "optimizer"
    assert run.n_steps == 4                        # 2 epochs × 4 batches ÷ 2 accumulated = 4 optimizer steps
    assert (run.layer("calls")[:, 0] == 2).all()   # two micro-batches per step
    assert np.isfinite(run.grad_norm).all()
    assert run.clipping                             # gradient_clip_val seen from the gradients themselves
    assert len(run.metrics["train_loss"]) == 2 and len(run.metrics["val_loss"]) == 2


def test_huggingface_trainer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gradscope.integrations.huggingface import GradscopeCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)   # built from a local config: nothing is downloaded
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 40, (24, 12), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4, logging_steps=2,
        eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=4, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, learning_rate=1e-3, max_grad_norm=1e-3)
    cb = GradscopeCallback(every=1, tensorboard=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8],
                                   callbacks=[cb])
    trainer.train()
    assert cb.scope is not None and cb.scope.closed
    run = load_run(tmp_path / "out" / "gradscope")
    assert run.completed and run.header.step_unit == "optimizer"
    assert run.steps.tolist() == list(range(6))
    assert np.isfinite(run.grad_norm).all() and run.clipping   # max_grad_norm=1e-3 binds
    assert len(run.metrics["train_loss"]) == 3 and len(run.metrics["val_loss"]) == 2
    assert any(la.type == "Conv1D" for la in run.layers)       # GPT-2's own layer type is watched
