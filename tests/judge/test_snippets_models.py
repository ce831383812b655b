"""Issue 11.2: fix snippets run on recurrent and transformer models, not only MLPs and CNNs.

Each model here is trained watched for a few steps into a temporary log; every rule's fix builder then runs on
the Run loaded from that log, for a finding that names all of its layers (whether or not the rule would fire),
and so do the fixes of what ``diagnose`` finds. Every snippet that needs only the model and its optimizer is
executed against the model, which must still forward a batch to outputs of the same shape in train and eval
mode. The texts are checked too: no residual or ``nn.Sequential`` around a module that returns a tuple, no width
change on a fused query/key/value projection, widths in hidden units (never 3×/4× an LSTM's or GRU's gate rows),
no LayerNorm or dropout after a projection of a transformer block that normalizes already.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import gradscope  # noqa: E402
from gradscope.judge.diagnose import diagnose  # noqa: E402
from gradscope.judge.findings import Code, Fix, FixKind  # noqa: E402
from gradscope.judge.rules._fixes import init_fix, norm_fix  # noqa: E402
from gradscope.judge.thresholds import Thresholds  # noqa: E402
from gradscope.store.load import load  # noqa: E402
from gradscope.store.run import Run  # noqa: E402
from tests.judge.snippets import check_fix, run_snippet, runnable  # noqa: E402
from tests.judge.test_snippets import all_fixes  # noqa: E402

HIDDEN = 20     # 3× = 60 (GRU gate rows), 4× = 80 (LSTM): numbers a width must never be counted in
D_MODEL = 32    # transformer width; the fused qkv projection is 96 wide


# ---------------------------------------------------------------- models

class SeqClassifier(nn.Module):
    """A recurrent layer over (batch, T, features), a linear head on the last step."""

    def __init__(self, cell: type[nn.RNNBase], layers: int = 1) -> None:
        super().__init__()
        self.rnn = cell(3, HIDDEN, num_layers=layers, batch_first=True)
        self.head = nn.Linear(HIDDEN, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class StackedRNN(nn.Module):
    """Separate vanilla RNNs with as many inputs as outputs (a residual would fit the shapes, not the tuple)."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.rnns = nn.ModuleList([nn.RNN(3 if i == 0 else HIDDEN, HIDDEN, batch_first=True) for i in range(depth)])
        self.head = nn.Linear(HIDDEN, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.rnns:
            x, _ = r(x)
        return self.head(x[:, -1])


class PreLNEncoder(nn.Module):
    """Token and position embeddings, a pre-LN ``nn.TransformerEncoder``, mean pooling, a linear head."""

    def __init__(self, vocab: int = 20, length: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, D_MODEL)
        self.pos = nn.Embedding(length, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, 4, 64, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        return self.head(self.encoder(self.tok(x) + self.pos(pos)[None]).mean(1))


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one fused ``c_attn`` projection split into query, key and value heads."""

    def __init__(self, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.c_proj = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(D_MODEL, 4 * D_MODEL)
        self.c_proj = nn.Linear(4 * D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """A pre-LN GPT block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(D_MODEL)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 20, length: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, D_MODEL)
        self.wpe = nn.Embedding(length, D_MODEL)
        self.h = nn.ModuleList([Block() for _ in range(layers)])
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.lm_head = nn.Linear(D_MODEL, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))[None]
        for b in self.h:
            h = b(h)
        return self.lm_head(self.ln_f(h))


class HFGPT2(nn.Module):
    """A tiny Hugging Face GPT2LMHeadModel (Conv1D projections, fused ``c_attn``) that returns the logits."""

    def __init__(self, vocab: int = 20, length: int = 8, layers: int = 2) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=D_MODEL, n_layer=layers,
                                      n_head=4, bos_token_id=0, eos_token_id=0)
        self.gpt = transformers.GPT2LMHeadModel(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=x).logits


def _seq() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, 3, generator=g), torch.randint(0, 4, (16,), generator=g)


def _tokens(classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (16, 8), generator=g)
    return x, (torch.randint(0, classes, (16,), generator=g) if classes else x)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, torch.Tensor]]]] = {
    "lstm": (lambda: SeqClassifier(nn.LSTM), _seq),
    "lstm2": (lambda: SeqClassifier(nn.LSTM, layers=2), _seq),
    "gru": (lambda: SeqClassifier(nn.GRU), _seq),
    "rnn_stack": (StackedRNN, _seq),
    "preln_encoder": (PreLNEncoder, lambda: _tokens(3)),
    "tiny_gpt": (TinyGPT, _tokens),
    "hf_gpt2": (HFGPT2, _tokens),
}
RECURRENT = ("lstm", "lstm2", "gru", "rnn_stack")
TRANSFORMERS = ("preln_encoder", "tiny_gpt", "hf_gpt2")

_BUILT: dict[str, tuple[nn.Module, torch.Tensor, Run]] = {}


def _built(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor, Run]:
    """The model (trained 6 steps with gradscope attached), a batch of its inputs and the Run of its log."""
    if name not in _BUILT:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                make, data = MODELS[name]
                model = make()
                x, y = data()
                logdir = tmp_path_factory.mktemp(name)
                opt = torch.optim.Adam(model.parameters(), 1e-2)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with gradscope.watch(model, logdir, every=1, tensorboard=False, optimizer=opt) as scope:
                        for _ in range(6):
                            out = model(x)
                            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
                            opt.zero_grad()
                            loss.backward()
                            opt.step()
                            scope.log(train_loss=float(loss.detach()))
                run = load(logdir, warn=False)[0]
        finally:
            torch.set_num_threads(threads)
        _BUILT[name] = (model, x[:8], run)
    return _BUILT[name]


def _fixes(run: Run) -> list[tuple[Code, Fix]]:
    return all_fixes(run) + [(f.code, fx) for f in diagnose(run).findings for fx in f.fixes]


def _text(fx: Fix) -> str:
    return f"{fx.summary}\n{fx.code}"


# ---------------------------------------------------------------- every snippet runs on the real model

@pytest.mark.parametrize("name", list(MODELS))
def test_every_snippet_runs_against_the_model(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built(name, tmp_path_factory)
    fixes = _fixes(run)
    problems = [f"{code.value}: {p}" for code, fx in fixes for p in check_fix(fx, run)]
    assert not problems, "\n".join(problems)
    ran: set[str] = set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for code, fx in fixes:
            if runnable(fx.code) and fx.code not in ran:
                run_snippet(fx.code, model, x, f"<{name}: {code.value}/{fx.kind.value}>")
                ran.add(fx.code)
    finally:
        torch.set_num_threads(threads)
    kinds = {fx.kind for _, fx in fixes if fx.code in ran}
    assert {FixKind.INIT, FixKind.LEARNING_RATE} <= kinds, f"{name}: ran only {sorted(k.value for k in kinds)}"
    assert len(ran) >= 6, f"{name}: only {len(ran)} snippets ran"


# ---------------------------------------------------------------- recurrent layers

@pytest.mark.parametrize("name", RECURRENT)
def test_no_residual_or_sequential_around_a_recurrent_layer(name: str,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    _, _, run = _built(name, tmp_path_factory)
    rnn_paths = [r"model\.rnn\b", r"model\.rnns\[\d\]"]
    for code, fx in _fixes(run):
        for p in rnn_paths:
            assert not re.search(rf"Residual\({p}", fx.code), f"{code.value}: residual around a tuple:\n{fx.code}"
            assert not re.search(rf"nn\.Sequential\({p}", fx.code), f"{code.value}: Sequential:\n{fx.code}"
            assert not re.search(rf"x \+ {p}", fx.code), f"{code.value}: x + rnn(x):\n{fx.code}"
        if fx.kind is FixKind.RESIDUAL:
            assert "GRU" in fx.summary and name == "rnn_stack", f"{name}: {_text(fx)}"


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_widths_are_hidden_units(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, _, run = _built(name, tmp_path_factory)
    caps = [fx for _, fx in _fixes(run) if fx.kind is FixKind.CAPACITY and fx.code]
    assert caps
    for fx in caps:
        assert f"{HIDDEN} → {HIDDEN * 2}" in fx.summary or f"{HIDDEN} → {HIDDEN // 2}" in fx.summary, fx.summary
        for gates in (3, 4):
            assert not re.search(rf"\b{gates * HIDDEN}\b", _text(fx)), f"gate rows counted as width: {_text(fx)}"


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm2"])
def test_widening_a_recurrent_layer_is_code_that_runs(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built(name, tmp_path_factory)
    widen = next(fx for _, fx in _fixes(run) if fx.kind is FixKind.CAPACITY and "widen" in fx.summary)
    assert "hidden_size" in widen.summary
    m = run_snippet(widen.code, model, x)
    assert m.rnn.hidden_size == 2 * HIDDEN and m.rnn.num_layers == model.rnn.num_layers   # type: ignore[union-attr]
    assert m.head.in_features == 2 * HIDDEN                                                 # type: ignore[union-attr]


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_init_names_the_recurrent_weights(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built(name, tmp_path_factory)
    inits = [fx for _, fx in _fixes(run) if fx.kind is FixKind.INIT and "weight_hh_l0" in fx.code]
    assert inits, f"{name}: no init fix names weight_hh_l0"
    fx = inits[0]
    assert "orthogonal_" in fx.code and "weight_ih_l0" in fx.code and "recurrent" in fx.summary
    assert "model.rnn.weight\n" not in fx.code + "\n" and "model.rnn.weight)" not in fx.code
    if name.startswith("lstm"):
        assert "fill_(1.0)" in fx.code          # forget-gate bias
        if name == "lstm2":
            assert "weight_hh_l1" in fx.code    # every stacked layer, by its recorded name
    m = run_snippet(fx.code, model, x)
    rnn = m.rnn if hasattr(m, "rnn") else m.rnns[0]
    w = rnn.weight_hh_l0.detach()
    gates = w.shape[0] // rnn.hidden_size
    for blk in w.chunk(gates):
        assert torch.allclose(blk @ blk.T, torch.eye(rnn.hidden_size), atol=1e-4)   # orthogonal per gate


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_normalization_and_dropout_keep_the_recurrent_tuple(name: str,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built(name, tmp_path_factory)
    fixes = _fixes(run)
    norm = next(fx for code, fx in fixes if fx.kind is FixKind.BATCHNORM and "model.rnn" in fx.code)
    assert f"model.rnn = OnOutput(model.rnn, nn.LayerNorm({HIDDEN}" in norm.code
    m = run_snippet(norm.code, model, x)
    out = m.rnn(x)      # type: ignore[operator]
    assert isinstance(out, tuple) and out[0].shape[-1] == HIDDEN
    drop = next(fx for _, fx in fixes if fx.kind is FixKind.REGULARIZATION and "dropout" in fx.summary.lower())
    assert "OnOutput(model.rnn, nn.Dropout(" in drop.code
    run_snippet(drop.code, model, x)


# ---------------------------------------------------------------- transformers

@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_blocks_get_transformer_advice(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, _, run = _built(name, tmp_path_factory)
    fixes = _fixes(run)
    qkv = r"(c_attn|self_attn|in_proj)"
    for code, fx in fixes:
        text = _text(fx)
        # Nothing added after a projection inside a block (the blocks have LayerNorm and dropout already).
        assert not re.search(r"= nn\.Sequential\(model\.(h|gpt|encoder)", fx.code), f"{code.value}:\n{text}"
        assert not re.search(r"OnOutput\(", fx.code), f"{code.value}:\n{text}"
        assert not re.search(r"BatchNorm[123]d\(", text), f"{code.value}: a BatchNorm in a transformer:\n{text}"
        # No width change on a fused qkv projection.
        if fx.kind is FixKind.CAPACITY:
            assert not re.search(rf"{qkv}\S* \(\d+ → \d+", fx.summary), fx.summary
            assert not re.search(rf"{qkv}\S* = nn\.", fx.code), fx.code
            assert not re.search(r"\b96\b", fx.code), fx.code          # 3 × d_model: the fused qkv width
        assert not re.search(r"(widen|halve the width of) \S*(c_attn|self_attn)", fx.summary), fx.summary
    norm = [fx for _, fx in fixes if fx.kind is FixKind.BATCHNORM and fx.code]
    assert norm and all("pre-LN" in fx.summary and "warmup" in fx.summary for fx in norm)
    init = [fx for _, fx in fixes if fx.kind is FixKind.INIT and "GPT-2" in fx.summary]
    assert init and "std=0.02" in init[0].code
    proj = [la.name for la in run.layers if la.name.endswith(("c_proj", "linear2", "self_attn"))]
    res = init_fix(run, proj, "test", Thresholds())
    assert res is not None and "GPT-2" in res.summary
    assert "std=0.01" in res.code, f"residual projections scaled by 1/sqrt(2·n_layer), n_layer=2:\n{res.code}"
    caps = [fx for _, fx in fixes if fx.kind is FixKind.CAPACITY]
    assert caps and all(f"{D_MODEL} → " in fx.summary and "heads" in fx.summary for fx in caps)


def test_the_feed_forward_resize_of_an_encoder_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built("preln_encoder", tmp_path_factory)
    widen = next(fx for _, fx in _fixes(run) if fx.kind is FixKind.CAPACITY and "bigger" in fx.summary)
    assert "linear1 = nn.Linear(32, 128" in widen.code
    m = run_snippet(widen.code, model, x)
    assert m.encoder.layers[0].linear1.out_features == 128    # type: ignore[union-attr,index]


def test_pre_ln_advice_sets_norm_first_on_torch_layers(tmp_path_factory: pytest.TempPathFactory) -> None:
    model, x, run = _built("preln_encoder", tmp_path_factory)
    fx = next(fx for _, fx in _fixes(run) if fx.kind is FixKind.BATCHNORM and fx.code)
    assert "norm_first = True" in fx.code and "LambdaLR" in fx.code
    m = run_snippet(fx.code, model, x)
    assert all(layer.norm_first for layer in m.encoder.layers)   # type: ignore[union-attr]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_a_projection_before_the_blocks_norm_gets_transformer_advice(name: str,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """A residual projection is followed by the block's next LayerNorm in the header: still transformer advice
    (an exploding ``attn.c_proj`` on a real GPT run got no normalization fix at all before)."""
    _, _, run = _built(name, tmp_path_factory)
    proj = [la.name for la in run.layers if la.name.endswith(("attn.c_proj", "linear2"))]
    fx = norm_fix(run, proj, "test", Thresholds())
    assert fx is not None and "pre-LN" in fx.summary and "Sequential" not in fx.code
