"""A fix covers every layer its finding names (issue 11: "batch norm suggested for 4 of 12 affected layers"):
the snippet edits all of them up to ``fix_max_code_layers`` and names the ones past it; the summary stays short."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import gradscope
from gradscope.judge.rules._fixes import init_fix, norm_fix, width_fix
from gradscope.judge.thresholds import Thresholds
from gradscope.store.load import load_run
from tests.judge.snippets import run_snippet


def _deep_sigmoid(tmp_path: Path, depth: int = 13) -> tuple[nn.Sequential, list[str]]:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i in range(depth):
        mods += [nn.Linear(8 if i else 4, 8), nn.Sigmoid()]
    model = nn.Sequential(*mods, nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, 4, generator=g)),
                                        torch.randint(0, 2, (16,), generator=g)).backward()
            opt.step()
    return model, [str(2 * i) for i in range(depth)]


def test_a_norm_fix_covers_all_twelve_affected_layers(tmp_path: Path) -> None:
    model, hidden = _deep_sigmoid(tmp_path)
    run, th = load_run(tmp_path), Thresholds()
    fix = norm_fix(run, hidden[:12], "keeps pre-activations centred", th)
    assert fix is not None and fix.code
    assert "(and 8 more)" in fix.summary                      # the summary stays short
    m = run_snippet(fix.code, model, torch.randn(4, 4))
    assert isinstance(m, nn.Module)
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.modules()) == 12


def test_past_the_code_cap_the_snippet_names_the_layers_it_left_out(tmp_path: Path) -> None:
    model, hidden = _deep_sigmoid(tmp_path)
    run = load_run(tmp_path)
    th = Thresholds(fix_max_code_layers=10)
    fix = init_fix(run, hidden, "Glorot init keeps pre-activations in range", th)
    assert fix is not None and fix.code
    assert "# and the same for the other 3 layers: '20', '22', '24'" in fix.code
    run_snippet(fix.code, model, torch.randn(4, 4))


def _trained(tmp_path: Path, model: nn.Sequential, d_in: int, classes: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, d_in, generator=g)),
                                        torch.randint(0, classes, (16,), generator=g)).backward()
            opt.step()


def test_a_hidden_layer_narrower_than_the_classes_is_widened_past_them(tmp_path: Path) -> None:
    """Doubling a 2-unit layer before a 10-class head (2 → 4) leaves the bottleneck: the capacity fix widens the
    narrowest hidden layer to at least the number of outputs and says why."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2), nn.ReLU(), nn.Linear(2, 10))
    _trained(tmp_path, model, 8, 10)
    fix = width_fix(load_run(tmp_path), Thresholds(), grow=True)
    assert fix is not None and fix.code and "model[2]" in fix.summary and "2 → 10" in fix.summary
    assert "bottleneck" in fix.summary
    m = run_snippet(fix.code, model, torch.randn(4, 8))
    assert isinstance(m, nn.Sequential) and m[2].out_features == 10 and m[4].in_features == 10


def test_a_linear_model_gets_a_hidden_layer_not_a_wider_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    _trained(tmp_path, model, 4, 3)
    fix = width_fix(load_run(tmp_path), Thresholds(), grow=True)
    assert fix is not None and fix.code and "linear" in fix.summary and "widen model" not in fix.summary
    m = run_snippet(fix.code, model, torch.randn(4, 4))
    assert any(isinstance(x, nn.ReLU) for x in m.modules())   # type: ignore[attr-defined]


def test_a_head_tied_to_the_embedding_is_the_head(tmp_path: Path) -> None:
    """A language model whose decoder shares the token embedding's weight records that weight once, under the
    embedding's name: the decoder is still the model's head (no LayerNorm on the logits, chance level from it)."""
    from gradscope.judge.rules._common import output_layer
    from gradscope.judge.rules._fixes import norm_fix

    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Embedding(20, 16)
            self.rnn = nn.LSTM(16, 16, batch_first=True)
            self.decoder = nn.Linear(16, 20)
            self.decoder.weight = self.encoder.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.rnn(self.encoder(x))[0])

    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    with gradscope.watch(model, tmp_path, every=1, tensorboard=False, optimizer=opt):
        for _ in range(3):
            x = torch.randint(0, 20, (4, 6), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x).reshape(-1, 20), x.reshape(-1)).backward()
            opt.step()
    run = load_run(tmp_path)
    head = output_layer(run)
    assert head is not None and run.layers[head].name == "decoder"
    fix = norm_fix(run, ["encoder", "decoder"], "bounds the signal", Thresholds())
    assert fix is not None and "decoder" not in fix.code
