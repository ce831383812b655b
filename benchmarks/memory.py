"""Extra peak memory of gradscope.watch, per benchmark model (issue budget: ≤ 5%).

    python benchmarks/memory.py [--models mlp,cnn,transformer] [--steps 30]

Each measurement is a fresh subprocess (peak RSS only grows, so two runs cannot share one process) that
imports everything both variants need (torch, gradscope, TensorBoard's writer) before building the model,
so the figure compares tensor memory, not imports. Reported: peak RSS during training with and without
gradscope, the ratio, and the extra memory as a share of what training itself added to the process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, tempfile
import torch, torch.nn.functional as F
import gradscope, gradscope.measure.watch, torch.utils.tensorboard  # imported in both variants
sys.path.insert(0, "benchmarks")
from overhead import MODELS
torch.set_num_threads(1)
name, steps, watched, every = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
TB = sys.argv[5] == "1"
torch.manual_seed(0)
model, data = MODELS[name]()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scope = gradscope.watch(model, tempfile.mkdtemp(), every=every, tensorboard=TB) if watched else None
x, y = data()
for _ in range(steps):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
if scope is not None:
    scope.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak}))
"""


def measure(name: str, steps: int, watched: bool, every: int, tb: bool = True) -> dict[str, int]:
    argv = [name, str(steps), "1" if watched else "0", str(every), "1" if tb else "0"]
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| model | setting | plain peak MiB | gradscope peak MiB | ratio | extra ÷ training memory |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory():
        for name in args.models.split(","):
            for label, every in (("default", 20), ("every step", 1)):
                plains = [measure(name, args.steps, False, every) for _ in range(args.repeats)]
                watched = [measure(name, args.steps, True, every) for _ in range(args.repeats)]
                p = min(r["peak_kb"] for r in plains)
                w = min(r["peak_kb"] for r in watched)
                train = p - min(r["base_kb"] for r in plains)
                print(f"| {name} | {label} | {p / 1024:.0f} | {w / 1024:.0f} | {w / p:.3f} | "
                      f"{(w - p) / max(train, 1):+.1%} |", flush=True)


if __name__ == "__main__":
    main()
