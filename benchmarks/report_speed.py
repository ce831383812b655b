"""Time `gradscope report` on a large synthetic log: 200 layers × 10,000 recorded steps (issue budget: ≤ 5 s).

    python benchmarks/report_speed.py [--layers 200] [--steps 10000] [--keep DIR]

Writes the log with gradscope's own LogWriter (realistic numbers, every field filled), then times the CLI
in a fresh subprocess, end to end, as a user would run it.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradscope.store.jsonl import LogWriter, log_path
from gradscope.store.schema import Header, LayerInfo, ParamInfo, StepRecord


def write_log(logdir: Path, n_layers: int, n_steps: int) -> Path:
    rng = random.Random(0)
    layers = tuple(LayerInfo(name=f"blocks.{i}.fc", type="Linear", fan_in=256, fan_out=256, unit_dim=-1,
                             act="relu", params=(f"blocks.{i}.fc.weight", f"blocks.{i}.fc.bias"),
                             weight=f"blocks.{i}.fc.weight") for i in range(n_layers))
    params = tuple(ParamInfo(name=f"blocks.{i}.fc.{k}", layer=f"blocks.{i}.fc", shape=(256, 256) if k == "weight"
                             else (256,), numel=65536 if k == "weight" else 256, init_mean=0.0, init_std=0.036)
                   for i in range(n_layers) for k in ("weight", "bias"))
    header = Header(schema=1, gradscope="bench", torch=None, created="", rank=0, world_size=1, every=1, warmup=0,
                    dead_window=5, saturation_derivative=0.1, step_unit="forward", model="Deep", layers=layers,
                    params=params)
    path = log_path(logdir)
    w = LogWriter(path)
    w.write(header.to_dict())
    w.write({"kind": "activations", "acts": {la.name: "relu" for la in layers}})
    for s in range(n_steps):
        lrows = tuple((65536, rng.gauss(0, 0.1), rng.uniform(0.5, 1.5), rng.uniform(3, 6), rng.uniform(0.4, 0.6), 0,
                       256, rng.randint(0, 3), 0, None, None, rng.uniform(1e-3, 1e-2), 1) for _ in layers)
        prows = tuple((rng.uniform(1e-3, 1e-2), rng.uniform(5, 10), rng.uniform(1e-4, 1e-3), 0.0) for _ in params)
        gn = rng.uniform(0.1, 1.0)
        w.write(StepRecord(step=s, time=s * 0.1, layers=lrows, params=prows, grad_norm=gn,
                           grad_norm_steps=((s, gn),)).to_dict())
        if s % 100 == 99:
            w.write({"kind": "metrics", "step": s, "values": {"train_loss": 1.0 / (1 + s / 1000),
                                                                "val_loss": 1.1 / (1 + s / 1000)}})
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.keep or Path(tmp)
        t0 = time.perf_counter()
        path = write_log(logdir, args.layers, args.steps)
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        for fmt in ("json", "text"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "gradscope", "report", str(logdir), "--format", fmt,
                                   "--fail-on", "never"], capture_output=True, text=True)
            dt = time.perf_counter() - t0
            print(f"gradscope report --format {fmt}: {dt:.2f} s (exit {proc.returncode}, "
                  f"{len(proc.stdout)} bytes of output)")
            if proc.returncode != 0:
                print(proc.stderr[-2000:])


if __name__ == "__main__":
    main()
