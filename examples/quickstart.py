"""Quickstart: attach gradscope to an ordinary training loop in one line, then read its report.

    python examples/quickstart.py [--small] [--logdir DIR]

The model is a small ReLU MLP on two interleaved spirals (generated, nothing is downloaded). The loop is the
usual one; gradscope adds the ``watch`` line, an optional ``scope.log`` per epoch (it feeds the over/
underfitting rules) and ``close`` (here: the ``with`` block). Afterwards, from a shell:

    gradscope report DIR            # the same report, from the log alone
    tensorboard --logdir DIR        # custom scalars → "gradscope", histograms, images, text
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.demo import SMALL_ENV, is_small, two_spirals
from gradscope.show.report import report


def main(argv: list[str] | None = None) -> gradscope.Report:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help=f"fewer epochs (also: {SMALL_ENV}=1)")
    ap.add_argument("--logdir", default=None)
    args = ap.parse_args(argv)
    logdir = args.logdir or tempfile.mkdtemp(prefix="gradscope-quickstart-")
    epochs = 6 if args.small or is_small() else 15
    torch.set_num_threads(1)   # a model this small runs faster on one thread

    gen = torch.Generator().manual_seed(0)
    x, y = two_spirals(2500, gen=gen)
    xt, yt, xv, yv = x[:2000], y[:2000], x[2000:], y[2000:]
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    with gradscope.watch(model, logdir) as scope:          # <- the one line
        for _epoch in range(epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(64):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():                            # eval passes are not counted as steps
                out_t, out_v = model(xt), model(xv)
            model.train()
            scope.log(train_loss=F.cross_entropy(out_t, yt).item(), val_loss=F.cross_entropy(out_v, yv).item(),
                      train_acc=(out_t.argmax(1) == yt).float().mean().item(),
                      val_acc=(out_v.argmax(1) == yv).float().mean().item())

    rep = report(logdir)          # what `gradscope report LOGDIR` prints
    print(rep)
    print(f"log: {logdir}\nnext: gradscope report {logdir}   |   tensorboard --logdir {logdir}")
    return rep


if __name__ == "__main__":
    result = main()
