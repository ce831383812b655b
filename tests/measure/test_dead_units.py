"""Dead units are counted on each layer's own clock: a layer that did not run in a recorded step (a starved
mixture-of-experts expert, a branch taken on some steps only) is not aged by that step (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope
from gradscope.store.load import load

WINDOW = 5


class TopOneMoE(nn.Module):
    """A token-level mixture of experts with top-1 routing: each expert (Linear-ReLU-Linear) runs only on the
    tokens routed to it, and not at all on a step where it got none. The router is biased so that the last
    expert is starved: it gets a token on some steps and none on most."""

    def __init__(self, dim: int = 8, hidden: int = 16, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                                      for _ in range(experts)])
        self.head = nn.Linear(dim, 3)
        with torch.no_grad():
            self.router.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -0.8]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (batch, tokens, dim)
        flat = x.reshape(-1, x.shape[-1])
        pick = self.router(flat).argmax(-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            mask = pick == e
            if bool(mask.any()):
                out = out.index_put((mask,), expert(flat[mask]))
        return self.head((flat + out).reshape(x.shape).mean(1))


def test_a_starved_expert_is_judged_on_the_steps_it_ran(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TopOneMoE()
    first = model.experts[3][0]
    calls: list[torch.Tensor] = []   # plain torch: per call of the starved expert, which units were positive
    first.register_forward_hook(lambda m, i, o: calls.append((o.detach() > 0).any(0)))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)
    steps = 80
    with gradscope.watch(model, tmp_path, every=1, warmup=0, dead_window=WINDOW, tensorboard=False):
        for _ in range(steps):
            x = torch.randn(2, 2, 8, generator=g)
            y = torch.randint(0, 3, (2,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert WINDOW < len(calls) < steps // 2, len(calls)   # starved: it ran on some steps, not on most

    run = load(tmp_path, warn=False)[0]
    col = run.layer_index("experts.3.0")
    dead = run.layer("dead")[:, col]
    ran = np.isfinite(run.layer("units")[:, col])
    assert int(ran.sum()) == len(calls)
    # The reference: a unit is dead when it was not positive in any of the expert's last WINDOW calls.
    active = torch.stack(calls).numpy()
    want = [float((~active[k - WINDOW + 1:k + 1].any(0)).sum()) if k + 1 >= WINDOW else float("nan")
            for k in range(len(calls))]
    got = dead[ran]
    np.testing.assert_array_equal(got, np.array(want))
    # What a global clock (ageing the expert on steps it did not run, as before) would have said: at least as
    # many dead units on every call, more on some — the steps the router gave it nothing were held against it.
    at = run.steps[ran]
    last = np.full(active.shape[1], -1)
    old = []
    for k, step in enumerate(at):
        last = np.where(active[k], step, last)
        old.append(float(((step - last) >= WINDOW).sum()) if step + 1 >= WINDOW else float("nan"))
    both = np.isfinite(got) & np.isfinite(np.array(old))
    assert (np.array(old)[both] >= got[both]).all() and (np.array(old)[both] > got[both]).any()
