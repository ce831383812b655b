"""Two gloo ranks on CPU training a small model with gradscope attached; run by tests/measure/test_distributed.py.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python -m tests.measure.dist_worker LOGDIR   # each rank

Each rank trains on its own slice of the same global batches, so the merged statistics of the two ranks
can be compared with one process training on the whole batch (``reference`` below, used by the test too).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import gradscope

WORLD = 2
STEPS = 5
PER_RANK = 16
LR = 0.1


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(WORLD * PER_RANK, 6, generator=g) * 2 + 0.5, torch.randint(0, 3, (WORLD * PER_RANK,),
                                                                                   generator=g))
            for _ in range(STEPS)]


def train(net: nn.Module, logdir: Path, rank: int | None, fail_at: int | None = None) -> None:
    """``rank=None``: one process on the whole batch (the reference)."""
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    with gradscope.watch(net, logdir, every=1, tensorboard=False, optimizer=opt) as scope:
        for i, (x, y) in enumerate(batches()):
            if fail_at is not None and i == fail_at:
                raise RuntimeError(f"rank {rank} fails on purpose at step {i}")
            if rank is not None:
                x, y = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        scope.log(train_loss=loss.item())


def reference(logdir: Path) -> None:
    train(make_model(), logdir, None)


def main() -> None:
    """One rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the environment, as torchrun sets them): DDP,
    then FSDP2, then a DDP run in which rank 1 raises at step 2 while rank 0 waits in a gradient all-reduce."""
    rank = int(os.environ["RANK"])
    logdir = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    try:
        train(nn.parallel.DistributedDataParallel(make_model()), logdir / "ddp", rank)
        from torch.distributed.fsdp import fully_shard

        model = make_model()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        train(model, logdir / "fsdp", rank)
        train(nn.parallel.DistributedDataParallel(make_model()), logdir / "raise", rank,
              fail_at=2 if rank == 1 else None)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
