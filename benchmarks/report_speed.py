"""Time `gradscope report` on a large synthetic log: 200 layers × 10,000 recorded steps (issue budget: ≤ 5 s).

    python benchmarks/report_speed.py [--layers 200] [--steps 10000] [--keep DIR | --log DIR] [--repeat 3]

Writes the log with gradscope's own LogWriter (realistic numbers, every field filled; ~10 s, skipped with
``--log DIR`` naming a log written before with ``--keep DIR``), then times

* each stage in this process (load, diagnose, render as JSON and as text), ``--repeat`` times, and
* the CLI in a fresh subprocess, end to end, as a user would run it, ``--repeat`` times per format,

printing the minimum (the least disturbed run: on a shared machine the others measure the neighbours), all
runs, the CPU seconds of the CLI runs and the load average. ``--stages 0`` / ``--cli 0`` skip a part.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
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


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:   # pragma: no cover - not POSIX
        return "load average unknown"


def _line(label: str, times: list[float], extra: str = "") -> str:
    return f"{label:<24} min {min(times):5.2f} s   runs " + " ".join(f"{t:.2f}" for t in times) + extra


def time_stages(logdir: Path, repeat: int) -> None:
    """load / diagnose / render, in this process (imports excluded, measured once)."""
    t0 = time.perf_counter()
    from gradscope.judge.diagnose import diagnose
    from gradscope.show.report import Report
    from gradscope.store.load import load_runs
    print(f"imports (store, judge, show): {time.perf_counter() - t0:.2f} s")
    stages: dict[str, list[float]] = {"load": [], "diagnose": [], "render --format json": [],
                                      "render --format text": []}
    for _ in range(repeat):
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            runs, problems = load_runs(logdir)
            t1 = time.perf_counter()
            diagnoses = [diagnose(r) for r in runs]
            t2 = time.perf_counter()
            rep = Report(diagnoses, problems=problems)
            rep.to_json()
            t3 = time.perf_counter()
            rep.render_text(width=100)
            t4 = time.perf_counter()
        for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[k].append(dt)
        del runs, diagnoses, rep
    for k, v in stages.items():
        print(_line(k, v))


def time_cli(logdir: Path, repeat: int) -> None:
    """The CLI end to end in a fresh process per run (import, read, diagnose, render)."""
    for fmt in ("json", "text"):
        walls, cpus = [], []
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "gradscope", "report", str(logdir), "--format", fmt,
                                   "--fail-on", "never"], capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                print(f"gradscope report --format {fmt}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
                return
        print(_line(f"gradscope report {fmt}", walls,
                    f"   (CPU min {min(cpus):.2f} s, {len(proc.stdout)} bytes of output)"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the log into DIR and leave it there")
    ap.add_argument("--log", type=Path, default=None, help="time the log already in DIR (no writing)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", type=int, default=1, help="0: skip the in-process stage timings")
    ap.add_argument("--cli", type=int, default=1, help="0: skip the end-to-end CLI timings")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.log is not None:
            logdir = args.log
            print(f"log {log_path(logdir)}: {log_path(logdir).stat().st_size / 1e6:.0f} MB")
        else:
            logdir = args.keep or Path(tmp)
            t0 = time.perf_counter()
            path = write_log(logdir, args.layers, args.steps)
            print(f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        print(_load())
        if args.stages:
            time_stages(logdir, args.repeat)
        if args.cli:
            time_cli(logdir, args.repeat)
        print(_load())


if __name__ == "__main__":
    main()
