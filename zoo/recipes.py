"""Real training recipes (issue 11.3): healthy runs as practitioners write them, each with a broken twin.

Each healthy case follows a published recipe at toy size (nanoGPT's AdamW + warm-up + cosine + clipping, the
PyTorch word_language_model's SGD at lr 20 with clipping 0.25, a Hugging Face model from a config, a ViT, a
OneCycle CNN, a BatchNorm ResNet with a step schedule, mixed precision with and without a GradScaler, a model
that standardizes its own input or its target). Its twin is the same recipe with one realistic mistake.

All of them train through ``fit_recipe`` (one loop with the options these recipes need), so a test can replace
``zoo.recipes.fit_recipe`` to capture a case's model and data without training. Text comes from the .rst
descriptions that ship inside scikit-learn (``sklearn/datasets/descr``), read as characters.

The ``unseen=True`` cases were written, labels included, before their first run (see zoo/cases.py).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning
from zoo.cases import (
    C,
    Data,
    DigitsCNN,
    InputNormMLP,
    K,
    SeqConv1d,
    SeqNet,
    TinyResNet,
    breast_cancer,
    case,
    diabetes,
    digits,
    sine_sequences,
)

SchedulerFactory = Callable[[torch.optim.Optimizer], object]


# ----------------------------------------------------------------------------------------------- training
def fit_recipe(model: nn.Module, opt: torch.optim.Optimizer, data: Data, logdir: Path, *, epochs: int,
               batch: int, every: int = 5, seed: int = 0, scheduler: SchedulerFactory | None = None,
               sched_on: str = "step", clip: float | None = None, autocast: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, watch_scaler: bool = True, unscale: bool = True,
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
    """The recipes' training loop, with gradscope attached (``optimizer=`` passed), as a user writes it.

    Tasks: "clf" (cross-entropy on class logits; logs ``train_acc``/``val_acc``), "lm" (next-token
    cross-entropy: ``x`` and ``y`` are (N, T) token ids, the model returns (N, T, vocab) logits), "reg" (MSE);
    ``loss`` replaces the task's loss. Per epoch: ``train_loss`` (mean over the epoch's batches) and
    ``val_loss`` in eval mode under ``no_grad``.

    ``scheduler`` is built from the optimizer and stepped per optimizer step (``sched_on="step"``), per epoch
    (``"epoch"``) or on the validation loss (``"val"``: ReduceLROnPlateau). ``clip``: ``clip_grad_norm_`` before
    the step. ``autocast``: forward and loss under ``torch.autocast("cpu", dtype)``. ``scaler``: a GradScaler
    loop (``scale(loss).backward()``, ``unscale_`` before clipping unless ``unscale=False`` — the classic
    mistake —, ``step``, ``update``), handed to ``watch(scaler=)`` when ``watch_scaler``."""
    g = torch.Generator().manual_seed(seed)
    if data.task == "lm":
        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    elif data.task == "clf":
        loss_fn = F.cross_entropy
    else:
        loss_fn = F.mse_loss
    if loss is not None:
        loss_fn = loss
    classify = data.task == "clf"
    sched = scheduler(opt) if scheduler is not None else None
    n = data.x_train.shape[0]
    ctx = (lambda: torch.autocast("cpu", dtype=autocast)) if autocast is not None else contextlib.nullcontext
    with warnings.catch_warnings():
        # A run that diverges makes watch() warn about the first NaN; that is the point of such a case.
        warnings.simplefilter("ignore", GradscopeWarning)
        with gradscope.watch(model, logdir, every=every, tensorboard=False, optimizer=opt,
                             scaler=scaler if watch_scaler else None) as scope:
            for _ in range(epochs):
                model.train()
                perm = torch.randperm(n, generator=g)
                tot, correct = 0.0, 0
                for i in range(0, n, batch):
                    idx = perm[i:i + batch]
                    opt.zero_grad(set_to_none=True)
                    with ctx():
                        out = model(data.x_train[idx])
                        batch_loss = loss_fn(out.float(), data.y_train[idx])
                    if scaler is not None:
                        scaler.scale(batch_loss).backward()
                        if clip is not None:
                            if unscale:
                                scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                        scaler.step(opt)
                        scaler.update()
                    else:
                        batch_loss.backward()
                        if clip is not None:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                        opt.step()
                    if sched is not None and sched_on == "step":
                        sched.step()
                    tot += float(batch_loss.detach()) * len(idx)
                    if classify:
                        correct += int((out.detach().float().argmax(1) == data.y_train[idx]).sum())
                model.eval()
                with torch.no_grad(), ctx():
                    vout = model(data.x_val).float()
                    metrics = {"train_loss": tot / n, "val_loss": float(loss_fn(vout, data.y_val))}
                    if classify:
                        metrics["val_acc"] = float((vout.argmax(1) == data.y_val).float().mean())
                        metrics["train_acc"] = correct / n
                if sched is not None and sched_on == "epoch":
                    sched.step()
                elif sched is not None and sched_on == "val":
                    sched.step(metrics["val_loss"])
                scope.log(**metrics)


def warmup_cosine(warmup: int, total: int, *, floor: float = 0.1) -> SchedulerFactory:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to ``floor`` × the peak at ``total``
    (nanoGPT's ``get_lr`` as a LambdaLR)."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups as nanoGPT builds them: weight decay on matrices (dim ≥ 2) only, none on biases,
    norms' gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _steps(data: Data, batch: int, epochs: int) -> int:
    return epochs * math.ceil(data.x_train.shape[0] / batch)


# --------------------------------------------------------------------------------------------------- data
@cache
def _corpus() -> str:
    """The scikit-learn dataset descriptions (.rst), concatenated in name order: ~85k characters of English."""
    root = resources.files("sklearn.datasets") / "descr"
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".rst"))
    return "\n".join((root / name).read_text(encoding="utf-8") for name in names)


def char_text(*, length: int = 32, n_train: int = 1024, n_val: int = 256, seed: int = 0) -> tuple[Data, int]:
    """Character windows of the scikit-learn descriptions: ``x`` = ``length`` characters, ``y`` = the same shifted
    by one (next-character targets); training windows from the first 90% of the text, validation windows from
    the last 10%. Returns the data (task "lm") and the vocabulary size."""
    text = _corpus()
    vocab = sorted(set(text))
    ids = _encode(text, vocab)
    cut = int(0.9 * len(ids))
    g = torch.Generator().manual_seed(seed)

    def windows(part: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randint(0, len(part) - length - 1, (n,), generator=g)
        offs = start[:, None] + torch.arange(length + 1)[None]
        w = part[offs]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    xt, yt = windows(ids[:cut], n_train)
    xv, yv = windows(ids[cut:], n_val)
    return Data(xt, yt, xv, yv, task="lm"), len(vocab)


def _encode(text: str, vocab: list[str]) -> torch.Tensor:
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def _images(seed: int) -> Data:
    return digits(image=True, seed=seed)


def _autoencode(d: Data) -> Data:
    """Images as their own targets (reconstruction, task "reg")."""
    return Data(d.x_train, d.x_train, d.x_val, d.x_val, task="reg")


# ------------------------------------------------------------------------------------------------- models
class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), x + mlp(ln(x)) with a GELU MLP of width 4d."""

    def __init__(self, d: int, heads: int, *, pre_ln: bool = True) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln1(x))
            return x + self.proj(F.gelu(self.fc(self.ln2(x))))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.proj(F.gelu(self.fc(x))))


class CharGPT(nn.Module):
    """nanoGPT at toy size: token + position embeddings, pre-LN blocks, final LayerNorm, a head tied to the token
    embedding; N(0, 0.02) init with the residual projections scaled by 1/√(2·layers)."""

    def __init__(self, vocab: int, length: int, *, d: int = 48, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        self.blocks = nn.ModuleList([GPTBlock(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight          # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)[None]          # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))                   # (B, T, vocab)


class HFCausalLM(nn.Module):
    """A Hugging Face ``GPT2LMHeadModel`` built from a config (random init), wrapped so that ``model(input_ids)``
    returns the logits."""

    def __init__(self, vocab: int, length: int, *, d: int = 48, layers: int = 2, heads: int = 4,
                 initializer_range: float = 0.02) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=d, n_layer=layers, n_head=heads,
                         bos_token_id=0, eos_token_id=0, initializer_range=initializer_range)
        self.gpt = GPT2LMHeadModel(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=input_ids).logits


class LSTMLanguageModel(nn.Module):
    """PyTorch's examples/word_language_model ``RNNModel`` (LSTM): embedding, dropout, a multi-layer LSTM,
    dropout, decoder tied to the embedding; encoder/decoder weights U(−0.1, 0.1), decoder bias 0."""

    def __init__(self, vocab: int, d: int = 64, layers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, d, layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(d, vocab)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop(self.encoder(idx)))
        return self.decoder(self.drop(out))


class ViT(nn.Module):
    """A Vision Transformer for 1×8×8 images: ``patch``×``patch`` patch embedding (a strided Conv2d), a class
    token, learned positions, ``nn.TransformerEncoder`` (pre-LN unless ``pre_ln=False``, GELU), final LayerNorm,
    head on the class token."""

    def __init__(self, *, patch: int = 2, d: int = 32, heads: int = 4, layers: int = 2, classes: int = 10,
                 pre_ln: bool = True) -> None:
        super().__init__()
        n = (8 // patch) ** 2
        self.patch = nn.Conv2d(1, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=pre_ln)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch(x).flatten(2).transpose(1, 2)                       # (B, patches, d)
        h = torch.cat([self.cls.expand(len(x), -1, -1), p], 1) + self.pos  # (B, 1 + patches, d)
        return self.head(self.norm(self.encoder(h))[:, 0])


class OneCycleCNN(nn.Module):
    """Conv-BN-ReLU ×2, max-pool, conv-ReLU, global average pooling, linear head (a small CIFAR-style net)."""

    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


class TargetScaledMLP(nn.Module):
    """A ReLU MLP that predicts a raw-unit target through fixed buffers: ``net(x) · y_std + y_mean`` (the
    standardized-target pattern of sklearn's TransformedTargetRegressor, inside the model)."""

    def __init__(self, sizes: list[int], y_mean: float, y_std: float) -> None:
        super().__init__()
        from gradscope.demo.models import mlp

        self.net = mlp(sizes)
        self.register_buffer("y_mean", torch.tensor(y_mean))
        self.register_buffer("y_std", torch.tensor(y_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.y_std + self.y_mean


class ConvAutoencoder(nn.Module):
    """8×8 image autoencoder: two strided convolutions down to 32×2×2, two transposed convolutions back up;
    a linear output (standardized pixels) unless ``out`` is given."""

    def __init__(self, out: nn.Module | None = None) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)     # 16×4×4
        self.enc2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)    # 32×2×2
        self.dec1 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)   # 16×4×4
        self.dec2 = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)    # 1×8×8
        self.out = out if out is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.enc2(F.relu(self.enc1(x))))
        return self.out(self.dec2(F.relu(self.dec1(z))))


# ================================================================ 1. nanoGPT-style character LM
def _gpt(logdir: Path, *, lr: float, warmup: int, clip: float | None) -> None:
    d, vocab = char_text(seed=101, n_train=768)
    m = CharGPT(vocab, 32)
    opt = torch.optim.AdamW(decay_groups(m, 0.1), lr, betas=(0.9, 0.95))
    epochs, batch = 4, 32
    sched = warmup_cosine(warmup, _steps(d, batch, epochs)) if warmup else None
    fit_recipe(m, opt, d, logdir, epochs=epochs, batch=batch, scheduler=sched, clip=clip, seed=101)


@case("recipe_healthy_gpt_char_adamw_warmup_cosine", "nanoGPT-style pre-LN causal transformer (2 layers, d=48, "
      "tied head, N(0, 0.02) init) on characters of scikit-learn's dataset descriptions; AdamW 3e-3 (betas "
      "0.9/0.95, weight decay 0.1 on matrices only), linear warm-up over 12 steps then cosine decay, "
      "clip_grad_norm_ 1.0.",
      arch="GPT (pre-LN transformer)", optimizer="AdamW", data="text (sklearn descr, chars)")
def _recipe_gpt(logdir: Path) -> None:
    _gpt(logdir, lr=3e-3, warmup=12, clip=1.0)


@case("recipe_lr_30x_gpt_char_no_warmup_no_clip", "The same GPT recipe with the learning rate 30× higher (0.09), "
      "constant, no warm-up and no gradient clipping.",
      must=(C.LEARNING_RATE,), may=(C.UNSTABLE_LOSS, C.DIVERGENCE, C.EXPLODING_GRADIENTS, C.UNDERFITTING,
                                     C.LR_PLATEAU, C.SATURATION),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="GPT (pre-LN transformer)", optimizer="AdamW", data="text (sklearn descr, chars)")
def _recipe_gpt_hot(logdir: Path) -> None:
    _gpt(logdir, lr=9e-2, warmup=0, clip=None)


# ================================================================ 2. Hugging Face GPT-2 from a config
def _hf(logdir: Path, *, initializer_range: float) -> None:
    from transformers import get_cosine_schedule_with_warmup

    d, vocab = char_text(seed=102)
    m = HFCausalLM(vocab, 32, initializer_range=initializer_range)
    opt = torch.optim.AdamW(m.parameters(), 2e-3, weight_decay=0.01)
    epochs, batch = 4, 32
    total = _steps(d, batch, epochs)
    fit_recipe(m, opt, d, logdir, epochs=epochs, batch=batch, clip=1.0, seed=102,
               scheduler=lambda o: get_cosine_schedule_with_warmup(o, 16, total))


@case("recipe_healthy_hf_gpt2_cosine_warmup", "Hugging Face GPT2LMHeadModel from a tiny GPT2Config (2 layers, "
      "d=48, random init, dropout 0.1) on characters of scikit-learn's dataset descriptions, AdamW 2e-3 with "
      "get_cosine_schedule_with_warmup (16 warm-up steps) and max_grad_norm 1.0, as the Trainer does.",
      unseen=True, arch="GPT-2 (transformers)", optimizer="AdamW", data="text (sklearn descr, chars)")
def _recipe_hf(logdir: Path) -> None:
    _hf(logdir, initializer_range=0.02)


@case("recipe_poor_init_hf_gpt2_initializer_range_1", "The same GPT-2 recipe with initializer_range=1.0 in the "
      "config (meant as a 'range', read as the std of every weight and embedding): attention logits and output "
      "logits start huge.",
      must=(C.POOR_INIT,), may=(C.LEARNING_RATE, C.UNSTABLE_LOSS, C.SATURATION, C.EXPLODING_GRADIENTS,
                                 C.VANISHING_GRADIENTS, C.UNDERFITTING, C.LR_PLATEAU),
      fixes={C.POOR_INIT: (K.INIT,)},
      arch="GPT-2 (transformers)", optimizer="AdamW", data="text (sklearn descr, chars)")
def _recipe_hf_init(logdir: Path) -> None:
    _hf(logdir, initializer_range=1.0)


# ================================================================ 3. word_language_model LSTM
def _lstm_lm(logdir: Path, *, clip: float | None) -> None:
    d, vocab = char_text(seed=103, n_train=768)
    m = LSTMLanguageModel(vocab)
    fit_recipe(m, torch.optim.SGD(m.parameters(), 20.0), d, logdir, epochs=4, batch=32, clip=clip, seed=103)


@case("recipe_healthy_lstm_lm_sgd20_clip", "PyTorch's word_language_model recipe on characters: 2-layer LSTM "
      "(64 units, tied embedding, dropout 0.2), plain SGD at lr 20 with clip_grad_norm_ 0.25.",
      arch="LSTM language model", optimizer="SGD", data="text (sklearn descr, chars)")
def _recipe_lstm_lm(logdir: Path) -> None:
    _lstm_lm(logdir, clip=0.25)


@case("recipe_exploding_lstm_lm_sgd20_no_clip", "The same word_language_model recipe without clip_grad_norm_: "
      "SGD at lr 20 takes raw gradient steps.",
      must=(C.EXPLODING_GRADIENTS,), may=(C.DIVERGENCE, C.LEARNING_RATE, C.UNSTABLE_LOSS, C.UNDERFITTING,
                                           C.SATURATION, C.LR_PLATEAU),
      fixes={C.EXPLODING_GRADIENTS: (K.CLIPPING,)},
      arch="LSTM language model", optimizer="SGD", data="text (sklearn descr, chars)")
def _recipe_lstm_lm_noclip(logdir: Path) -> None:
    _lstm_lm(logdir, clip=None)


# ================================================================ 4. ViT on digits
def _vit(logdir: Path, *, lr: float, warmup: int) -> None:
    d = _images(104)
    m = ViT()
    epochs, batch = 8, 64
    sched = warmup_cosine(warmup, _steps(d, batch, epochs), floor=0.0) if warmup else None
    fit_recipe(m, torch.optim.AdamW(decay_groups(m, 0.05), lr), d, logdir, epochs=epochs, batch=batch,
               scheduler=sched, seed=104)


@case("recipe_healthy_vit_digits_adamw_warmup_cosine", "ViT (2×2 patches, class token, 2 pre-LN layers, d=32) on "
      "standardized 8×8 digits, AdamW 3e-3 (weight decay 0.05 on matrices), 20 warm-up steps then cosine to 0.",
      unseen=True, arch="ViT", optimizer="AdamW", data="digits")
def _recipe_vit(logdir: Path) -> None:
    _vit(logdir, lr=3e-3, warmup=20)


@case("recipe_lr_high_vit_digits_no_warmup", "The same ViT recipe at a constant lr 3e-2 (10× higher, no warm-up, "
      "no decay).",
      must=(C.LEARNING_RATE,), may=(C.UNSTABLE_LOSS, C.DIVERGENCE, C.EXPLODING_GRADIENTS, C.UNDERFITTING,
                                     C.LR_PLATEAU, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="ViT", optimizer="AdamW", data="digits")
def _recipe_vit_hot(logdir: Path) -> None:
    _vit(logdir, lr=3e-2, warmup=0)


# ================================================================ 5. OneCycleLR CNN
def _onecycle(logdir: Path, *, max_lr: float) -> None:
    d = _images(105)
    m = OneCycleCNN()
    epochs, batch = 6, 64
    total = _steps(d, batch, epochs)
    opt = torch.optim.SGD(m.parameters(), max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fit_recipe(m, opt, d, logdir, epochs=epochs, batch=batch, seed=105,
               scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr, total_steps=total))


@case("recipe_healthy_onecycle_cnn_sgd_nesterov", "BatchNorm CNN on digit images, SGD with Nesterov momentum 0.9 "
      "and weight decay 5e-4 under OneCycleLR (max_lr 0.1) for 6 epochs. Relabelled after its first run: it is "
      "not healthy — around the one-cycle peak (steps 40–60) the validation loss jumps to 12.6 and the accuracy "
      "to 10%, 75% of conv3's ReLU units (no BatchNorm after it) die and stay dead, and it ends at 24% validation "
      "error — so dead_relu is true of it (allowed), with the learning rate, loss spikes and underfitting.",
      may=(C.DEAD_RELU, C.LEARNING_RATE, C.UNSTABLE_LOSS, C.UNDERFITTING),
      unseen=True, arch="CNN (BatchNorm)", optimizer="SGD+momentum", data="digits")
def _recipe_onecycle(logdir: Path) -> None:
    _onecycle(logdir, max_lr=0.1)


@case("recipe_healthy_onecycle_cnn_max_lr_0_02", "The same OneCycle recipe (BatchNorm CNN, SGD Nesterov 0.9, "
      "weight decay 5e-4, 6 epochs) at max_lr 0.02, added after the unseen max_lr-0.1 run turned out unhealthy: "
      "the healthy one-cycle run of the pair.",
      arch="CNN (BatchNorm)", optimizer="SGD+momentum", data="digits")
def _recipe_onecycle_sane(logdir: Path) -> None:
    _onecycle(logdir, max_lr=0.02)


@case("recipe_lr_high_onecycle_cnn_max_lr_20", "The same OneCycle recipe with max_lr 20 (read off the wrong "
      "end of an LR-finder plot). Written as a divergence; relabelled after its first calibration run: BatchNorm "
      "keeps it finite (no NaN) while the weights grow 1.7e4× and the run sits at chance (train error 90%), so "
      "the learning rate is the verdict and divergence is allowed.",
      must=(C.LEARNING_RATE,), may=(C.DIVERGENCE, C.EXPLODING_GRADIENTS, C.UNSTABLE_LOSS, C.DEAD_RELU,
                                     C.UNDERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="CNN (BatchNorm)", optimizer="SGD+momentum", data="digits")
def _recipe_onecycle_hot(logdir: Path) -> None:
    _onecycle(logdir, max_lr=20.0)


# ================================================================ 6. BN ResNet with a step schedule
def _resnet(logdir: Path, *, gamma: float) -> None:
    d = _images(106)
    m = TinyResNet()
    epochs, batch = 7, 64
    per_epoch = _steps(d, batch, 1)
    opt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    fit_recipe(m, opt, d, logdir, epochs=epochs, batch=batch, seed=106,
               scheduler=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [4 * per_epoch], gamma))


@case("recipe_healthy_resnet_multistep_sgdm", "Small BatchNorm ResNet (2 residual blocks) on digit images, "
      "SGD+momentum 0.05 with weight decay 5e-4, MultiStepLR dropping the rate tenfold after epoch 4 of 7.",
      arch="ResNet (small)", optimizer="SGD+momentum", data="digits")
def _recipe_resnet(logdir: Path) -> None:
    _resnet(logdir, gamma=0.1)


@case("recipe_lr_high_resnet_multistep_gamma_10", "The same ResNet recipe with MultiStepLR(gamma=10) (a typo for "
      "0.1): after epoch 4 the learning rate jumps to 0.5 instead of dropping to 0.005.",
      must=(C.LEARNING_RATE,), may=(C.UNSTABLE_LOSS, C.DIVERGENCE, C.EXPLODING_GRADIENTS, C.UNDERFITTING,
                                     C.DEAD_RELU, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      unseen=True, arch="ResNet (small)", optimizer="SGD+momentum", data="digits")
def _recipe_resnet_gamma(logdir: Path) -> None:
    _resnet(logdir, gamma=10.0)


# ================================================================ 7. GRU with ReduceLROnPlateau
def _gru(logdir: Path, *, lr: float, clip: float | None) -> None:
    m = SeqNet(nn.GRU, 1, 32, 4)
    fit_recipe(m, torch.optim.Adam(m.parameters(), lr), sine_sequences(800, 24, seed=107), logdir, epochs=8,
               batch=32, clip=clip, seed=107, sched_on="val",
               scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1))


@case("recipe_healthy_gru_adam_plateau_clip", "GRU (hidden 32) classifying noisy sines (T=24), Adam 3e-3 with "
      "clip_grad_norm_ 1.0 and ReduceLROnPlateau on the validation loss (factor 0.5, patience 1).",
      arch="GRU", optimizer="Adam", data="synthetic sines")
def _recipe_gru(logdir: Path) -> None:
    _gru(logdir, lr=3e-3, clip=1.0)


@case("recipe_lr_high_gru_adam_no_clip", "The same GRU recipe at Adam lr 0.1 (33× higher) without gradient "
      "clipping. Written as broken (must learning_rate) before its first run; relabelled after it: the run "
      "relapsed once (validation accuracy 96% → 78% in epoch 5) but ReduceLROnPlateau halved the rate and it "
      "ended at 97.5% validation accuracy, better than its healthy twin; its weights grew 8.7–10.8× (median "
      "9.75×, the criterion's 10× not reached). A too-high rate is plausible (allowed), not required; the GRU's "
      "broken twin is recipe_stuck_gru_sgd_lr2_no_clip.",
      may=(C.LEARNING_RATE, C.EXPLODING_GRADIENTS, C.UNSTABLE_LOSS, C.DIVERGENCE, C.UNDERFITTING,
           C.SATURATION, C.LR_PLATEAU),
      unseen=True, arch="GRU", optimizer="Adam", data="synthetic sines")
def _recipe_gru_hot(logdir: Path) -> None:
    _gru(logdir, lr=0.1, clip=None)


@case("recipe_stuck_gru_sgd_lr2_no_clip", "The GRU recipe as the classic RNN recipe: plain SGD at lr 2.0 (what "
      "works with clip_grad_norm_ 0.25 on a language model) with the clipping forgotten and no scheduler. Written "
      "as an exploding-gradient twin; relabelled after its first run: the gradients never grew (total norm "
      "0.1–0.4), the run is stuck at chance instead (loss 1.41 ≈ log 4, validation accuracy 20–29%): the "
      "head's update/weight ratio is 0.14 per step and its weights shrink 1.16 → 0.55 while the recurrent "
      "weights barely move (9e-4). Underfitting is what a practitioner sees; a too-high rate is plausible.",
      must=(C.UNDERFITTING,), may=(C.LEARNING_RATE, C.EXPLODING_GRADIENTS, C.VANISHING_GRADIENTS, C.UNSTABLE_LOSS,
                                   C.SATURATION, C.LR_PLATEAU),
      arch="GRU", optimizer="SGD", data="synthetic sines")
def _recipe_gru_sgd(logdir: Path) -> None:
    m = SeqNet(nn.GRU, 1, 32, 4)
    fit_recipe(m, torch.optim.SGD(m.parameters(), 2.0), sine_sequences(800, 24, seed=117), logdir, epochs=8,
               batch=32, seed=117)


# ================================================================ 8. bf16 autocast
def _bf16(logdir: Path, *, lr: float) -> None:
    from gradscope.demo.models import mlp

    m = mlp([64, 256, 128, 10])
    d = digits(seed=108)
    epochs, batch = 6, 64
    fit_recipe(m, torch.optim.AdamW(m.parameters(), lr, weight_decay=0.01), d, logdir, epochs=epochs,
               batch=batch, autocast=torch.bfloat16, seed=108,
               scheduler=warmup_cosine(10, _steps(d, batch, epochs), floor=0.0))


@case("recipe_healthy_bf16_autocast_mlp_adamw", "ReLU MLP 64-256-128-10 on standardized digits under bf16 "
      "autocast (no scaler needed), AdamW 1e-3 with 10 warm-up steps and cosine decay.",
      arch="MLP (bf16 autocast)", optimizer="AdamW", data="digits")
def _recipe_bf16(logdir: Path) -> None:
    _bf16(logdir, lr=1e-3)


@case("recipe_lr_high_bf16_autocast_mlp_adamw", "The same bf16 recipe with a peak AdamW lr of 0.1 (100×).",
      must=(C.LEARNING_RATE,), may=(C.UNSTABLE_LOSS, C.DEAD_RELU, C.DIVERGENCE, C.UNDERFITTING,
                                     C.EXPLODING_GRADIENTS, C.OVERFITTING),
      fixes={C.LEARNING_RATE: (K.LEARNING_RATE,)},
      arch="MLP (bf16 autocast)", optimizer="AdamW", data="digits")
def _recipe_bf16_hot(logdir: Path) -> None:
    _bf16(logdir, lr=0.1)


# ================================================================ 9. fp16 with a GradScaler passed to watch
def _fp16(logdir: Path, *, unscale: bool, model: nn.Module | None = None) -> None:
    m = model if model is not None else OneCycleCNN(8)
    fit_recipe(m, torch.optim.SGD(m.parameters(), 0.05, momentum=0.9), _images(109), logdir, epochs=5, batch=64,
               autocast=torch.float16, scaler=torch.amp.GradScaler("cpu"), clip=1.0, unscale=unscale, seed=109)


@case("recipe_healthy_fp16_gradscaler_clip", "BatchNorm CNN (two convolutions, flattened head) on digit images "
      "under fp16 autocast with a GradScaler (passed as watch(scaler=)), scaler.unscale_ before clip_grad_norm_ "
      "1.0, SGD+momentum 0.05. (First calibrated with the global-average-pooling CNN of its twin, which "
      "overfits digits — validation error 23% vs train 9% — so overfitting was true of it; the model was "
      "changed, not the rule.)",
      arch="CNN (fp16 autocast, GradScaler)", optimizer="SGD+momentum", data="digits")
def _recipe_fp16(logdir: Path) -> None:
    _fp16(logdir, unscale=True, model=DigitsCNN(8, 16, bn=True))


@case("recipe_lr_low_fp16_clip_without_unscale", "The same fp16 recipe without scaler.unscale_ before "
      "clip_grad_norm_(…, 1.0): the loss-scaled gradients (×65536) are clipped to norm 1, so the true step is "
      "~65536× too small. Its fix label was written as a learning-rate fix before its first run; that run "
      "passed by suggesting lr 40 (was 0.05), which would blow up once the clipping is fixed. The finding now "
      "names the clipping (it keeps 3.6e-05 of each gradient) and its fix is scaler.unscale_ before "
      "clip_grad_norm_, so the required fix kind was corrected to clipping.",
      must=(C.LEARNING_RATE,), may=(C.UNDERFITTING,),
      fixes={C.LEARNING_RATE: (K.CLIPPING,)},
      unseen=True, arch="CNN (fp16 autocast, GradScaler)", optimizer="SGD+momentum", data="digits")
def _recipe_fp16_noscale(logdir: Path) -> None:
    _fp16(logdir, unscale=False)


# ================================================================ 10. raw-unit regression target
def _raw_target_data() -> Data:
    return diabetes(scale_target=False, seed=110)


@case("recipe_healthy_raw_target_standardized_in_loss", "ReLU MLP 10-64-64-1 on standardized diabetes features "
      "with the target in raw units (152 ± 77), SGD+momentum 0.01: the model predicts a standardized target "
      "and de-standardizes it with buffers (TransformedTargetRegressor inside the model), the MSE is taken on "
      "standardized values.",
      arch="MLP regression (raw target)", optimizer="SGD+momentum", data="diabetes (raw target)")
def _recipe_raw_target(logdir: Path) -> None:
    d = _raw_target_data()
    mu, sd = float(d.y_train.mean()), float(d.y_train.std())
    m = TargetScaledMLP([10, 64, 64, 1], mu, sd)
    fit_recipe(m, torch.optim.SGD(m.parameters(), 0.01, momentum=0.9), d, logdir, epochs=25, batch=32, seed=110,
               loss=lambda out, y: F.mse_loss((out - mu) / sd, (y - mu) / sd))


@case("recipe_exploding_raw_target_plain_mse", "The same regression recipe (SGD+momentum 0.01) with a plain MLP "
      "and MSE on the raw target (152 ± 77): the first gradients are ~150× those of the standardized loss. "
      "Written as a divergence; relabelled after its first calibration run: it stays finite while weights and "
      "activations grow by 1e10 (exploding, as exploding_uniform_raw_target), divergence allowed.",
      must=(C.EXPLODING_GRADIENTS,), may=(C.DIVERGENCE, C.LEARNING_RATE, C.UNSTABLE_LOSS, C.DEAD_RELU,
                                           C.UNDERFITTING),
      fixes={C.EXPLODING_GRADIENTS: (K.LEARNING_RATE,)},
      arch="MLP regression (raw target)", optimizer="SGD+momentum", data="diabetes (raw target)")
def _recipe_raw_target_mse(logdir: Path) -> None:
    from gradscope.demo.models import mlp

    m = mlp([10, 64, 64, 1])
    fit_recipe(m, torch.optim.SGD(m.parameters(), 0.01, momentum=0.9), _raw_target_data(), logdir, epochs=25,
               batch=32, seed=110)


# ================================================================ 11. a model that standardizes its own input
def _norm_input(logdir: Path, *, fitted: bool) -> None:
    d = breast_cancer(standardize=False, seed=111)
    mean = d.x_train.mean(0) if fitted else torch.zeros(30)
    std = d.x_train.std(0) if fitted else torch.ones(30)
    m = InputNormMLP(mean, std, [30, 64, 32, 2])
    fit_recipe(m, torch.optim.Adam(m.parameters(), 1e-3), d, logdir, epochs=15, batch=32, seed=111)


@case("recipe_healthy_normalize_in_forward_cancer", "ReLU MLP on raw breast-cancer features (areas ≈ 650, "
      "smoothness ≈ 0.1) that standardizes them inside forward() with mean/std buffers computed from the training "
      "set, Adam 1e-3.",
      arch="MLP (input normalized in forward)", optimizer="Adam", data="breast_cancer (raw)")
def _recipe_norm(logdir: Path) -> None:
    _norm_input(logdir, fitted=True)


@case("recipe_unnormalized_buffers_never_fitted", "The same model whose normalization buffers were never filled "
      "from the data (left at mean 0, std 1): forward() passes the raw features (0.003–4000) through unchanged.",
      must=(C.UNNORMALIZED_INPUT,), may=(C.UNSTABLE_LOSS, C.UNDERFITTING, C.OVERFITTING, C.DEAD_RELU,
                                          C.LEARNING_RATE),
      fixes={C.UNNORMALIZED_INPUT: (K.NORMALIZATION,)},
      unseen=True, arch="MLP (input normalized in forward)", optimizer="Adam", data="breast_cancer (raw)")
def _recipe_norm_unfitted(logdir: Path) -> None:
    _norm_input(logdir, fitted=False)


# ================================================================ 12. 1-D CNN with AdamW + cosine
def _conv1d(logdir: Path, *, unit_normal: bool) -> None:
    m = SeqConv1d(1, (16, 32, 32), 4)
    if unit_normal:   # nn.init.normal_ without std= : N(0, 1)
        for mod in m.modules():
            if isinstance(mod, (nn.Conv1d, nn.Linear)):
                nn.init.normal_(mod.weight)
    d = sine_sequences(600, 64, seed=112)
    epochs, batch = 6, 32
    fit_recipe(m, torch.optim.AdamW(m.parameters(), 3e-3, weight_decay=0.01), d, logdir, epochs=epochs,
               batch=batch, seed=112, scheduler=warmup_cosine(0, _steps(d, batch, epochs), floor=0.0))


@case("recipe_healthy_conv1d_adamw_cosine", "1-D CNN (16/32/32 channels, global average pooling) classifying "
      "noisy sines of length 64, AdamW 3e-3 with cosine decay to 0.",
      arch="1-D CNN", optimizer="AdamW", data="synthetic sines")
def _recipe_conv1d(logdir: Path) -> None:
    _conv1d(logdir, unit_normal=False)


@case("recipe_poor_init_conv1d_unit_normal", "The same 1-D CNN recipe with every weight re-initialized by "
      "nn.init.normal_(w) (std 1, no fan-in scaling).",
      must=(C.POOR_INIT,), may=(C.EXPLODING_GRADIENTS, C.DEAD_RELU, C.UNSTABLE_LOSS, C.LEARNING_RATE,
                                 C.UNDERFITTING, C.OVERFITTING, C.DIVERGENCE),
      fixes={C.POOR_INIT: (K.INIT,)},
      unseen=True, arch="1-D CNN", optimizer="AdamW", data="synthetic sines")
def _recipe_conv1d_init(logdir: Path) -> None:
    _conv1d(logdir, unit_normal=True)


# ================================================================ 13. convolutional autoencoder
def _autoencoder(logdir: Path, *, out: nn.Module | None) -> None:
    m = ConvAutoencoder(out)
    fit_recipe(m, torch.optim.Adam(m.parameters(), 2e-3), _autoencode(_images(113)), logdir, epochs=10,
               batch=64, seed=113)


@case("recipe_healthy_conv_autoencoder_digits", "Convolutional autoencoder (two strided convolutions, two "
      "transposed convolutions, linear output) reconstructing standardized digit images, MSE, Adam 2e-3.",
      unseen=True, arch="CNN autoencoder", optimizer="Adam", data="digits (reconstruction)")
def _recipe_ae(logdir: Path) -> None:
    _autoencoder(logdir, out=None)


@case("recipe_underfitting_autoencoder_sigmoid_on_standardized", "The same autoencoder with a Sigmoid output "
      "(copied from a [0, 1]-pixel recipe) while the targets are standardized pixels (−0.8 to 3): the background "
      "(−0.8) and the bright strokes (> 1) are out of reach.",
      must=(C.UNDERFITTING,), may=(C.SATURATION, C.LR_PLATEAU, C.LEARNING_RATE),
      known_miss="a regression's loss has no scale without the target's: the MSE ends at 0.52 (R² ≈ 0.48 "
      "against the standardized pixels' variance 1), still falling slowly, validation equal to training; "
      "gradscope never sees the targets, so it cannot tell 0.52 from a noise floor, and the output sigmoid's "
      "range is not compared with anything. Logging a baseline (the target variance) would let the rule "
      "judge it; not built.",
      arch="CNN autoencoder", optimizer="Adam", data="digits (reconstruction)")
def _recipe_ae_sigmoid(logdir: Path) -> None:
    _autoencoder(logdir, out=nn.Sigmoid())
