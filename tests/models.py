"""Small real models for the write-side tests (torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Tricky(nn.Module):
    """Dropout, BatchNorm, ReLU(inplace=True), and one module called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.2)
        self.shared = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.fc1(x)))
        h = self.drop(h)
        h = torch.tanh(self.shared(h))
        h = F.relu(self.shared(h))        # the same module again
        return self.out(h)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.head(x.mean(dim=(2, 3)))


class SmallRNN(nn.Module):
    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = cell(6, 12, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class SmallTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 20)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(tok)))


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"logits": self.head(h), "aux": h.pow(2).mean()}


def train_tricky(model: nn.Module, steps: int, seed: int = 0) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train ``Tricky`` with eval passes under no_grad in between; return the losses and final weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = torch.randint(0, 3, (256,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for i in range(steps):
        idx = torch.randint(0, 256, (32,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if i % 7 == 3:
            model.eval()
            with torch.no_grad():
                model(x[:64])
            model.train()
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
