"""Fuzzing the read side with a real log: truncation, byte flips, type mutations of every field of every
record kind, oversized and deep records, damaged TensorBoard event files, a writer killed mid-write. Loading
may only ever raise ``LogError``, and ``diagnose`` never raises on what loading returns (if it does, the
reader let a bad value through). Seeded and bounded: the same cases on every machine, a few seconds."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gradscope.errors import GradscopeWarning, LogError
from gradscope.judge.diagnose import diagnose
from gradscope.store.jsonl import log_path, read_log
from gradscope.store.load import load_run
from gradscope.store.tb_scalars import read_scalars
from tests.logfactory import write_tb_scalars

SEED = 20261129
REPO = Path(__file__).resolve().parents[2]

MUTANTS: tuple[Any, ...] = (None, "x", [1], {"a": 1}, -1, 1e308, math.nan, 2**70,
                            json.loads("[" * 40 + "]" * 40))
"""What each field of each record is replaced with: every wrong type, a negative, a huge float, NaN (as the
non-standard ``NaN`` token), an integer beyond int64, and a nesting deeper than ``MAX_DEPTH``."""


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A log of a tiny real watched training (every record kind the watch writes), plus a nonfinite and a
    problem record, as the watch writes them."""
    import torch
    from torch import nn

    import gradscope

    d = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with gradscope.watch(model, d, every=2, warmup=1, tensorboard=False, optimizer=opt) as scope:
        for step in range(10):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step % 3 == 2:
                scope.log(train_loss=loss.item(), val_loss=loss.item() * 1.1, val_acc=0.5)
    lines = log_path(d).read_bytes().splitlines(keepends=True)
    extra = [{"kind": "nonfinite", "step": 8, "where": "gradient", "layer": "2", "param": "2.weight"},
             {"kind": "problem", "step": 8, "where": "backward hook of 2", "message": "RuntimeError: boom"}]
    data = b"".join(lines[:-1] + [json.dumps(r).encode() + b"\n" for r in extra] + lines[-1:])
    kinds = {json.loads(ln)["kind"] for ln in data.splitlines()}
    assert kinds == {"header", "activations", "step", "loop", "metrics", "nonfinite", "problem", "grad_norms",
                     "close"}
    return data


def _check(logdir: Path) -> int:
    """Load and diagnose ``logdir``; only ``LogError`` may come out of loading, nothing out of diagnose.
    Returns the number of step records read (-1 for a ``LogError``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)
        try:
            run = load_run(logdir, warn=False)
        except LogError as e:
            assert "\n" not in str(e)
            return -1
        d = diagnose(run)
    assert all("\n" not in p for p in run.problems)
    assert d.run is run
    return int(run.steps.size)


def _steps_in(data: bytes) -> list[int]:
    return [json.loads(ln)["step"] for ln in data.splitlines() if ln.startswith(b'{"kind":"step"')]


def test_truncation_at_many_offsets_keeps_the_records_before(tmp_path: Path, real_log: bytes) -> None:
    rng = random.Random(SEED)
    path = log_path(tmp_path)
    offsets = sorted({0, 1, len(real_log) - 1, *(rng.randrange(len(real_log)) for _ in range(60))})
    for cut in offsets:
        data = real_log[:cut]
        path.write_bytes(data)
        complete = data[:data.rfind(b"\n") + 1]
        n = _check(tmp_path)
        if b"\n" not in data:
            assert n == -1 or n == 0
        else:
            assert n == len(_steps_in(complete)), cut


def test_byte_flips_keep_the_records_before_the_damage(tmp_path: Path, real_log: bytes) -> None:
    rng = random.Random(SEED + 1)
    path = log_path(tmp_path)
    header_end = real_log.index(b"\n") + 1
    for _ in range(80):
        pos = rng.randrange(len(real_log))
        data = bytearray(real_log)
        data[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        n = _check(tmp_path)
        if pos >= header_end:
            before = real_log[:real_log.rfind(b"\n", 0, pos) + 1]
            assert n >= len(_steps_in(before)), pos
        else:   # a damaged header is refused, or read with other sizes (then steps may not match it)
            assert -1 <= n <= len(_steps_in(real_log)), pos


def _paths(v: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Every place in a record: its keys, nested objects' keys, and the first item of each list."""
    if depth > 3:
        return
    if isinstance(v, dict):
        for k, x in v.items():
            yield (*prefix, k)
            yield from _paths(x, (*prefix, k), depth + 1)
    elif isinstance(v, list) and v:
        yield (*prefix, 0)
        yield from _paths(v[0], (*prefix, 0), depth + 1)


def _set(rec: Any, where: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(rec)
    node = out
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    return out


def test_type_mutations_of_every_field_of_every_record_kind(tmp_path: Path, real_log: bytes) -> None:
    lines = [json.loads(ln) for ln in real_log.splitlines()]
    firsts: dict[str, int] = {}
    for i, rec in enumerate(lines):
        firsts.setdefault(rec["kind"], i)
    firsts["step with input"] = next(i for i, r in enumerate(lines) if r["kind"] == "step" and "input" in r)
    path = log_path(tmp_path)
    cases = 0
    for i in sorted(set(firsts.values())):
        for where in _paths(lines[i]):
            if where == ("kind",):
                continue
            for value in MUTANTS:
                mutated = [*lines[:i], _set(lines[i], where, value), *lines[i + 1:]]
                path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in mutated))
                n = _check(tmp_path)
                if i > 0:   # only the mutated record may be lost
                    assert n >= len(_steps_in(real_log)) - 1, (where, value)
                cases += 1
    assert cases > 500


def test_mutated_second_rank_is_merged_or_refused_never_raises(tmp_path: Path, real_log: bytes) -> None:
    """Merging ranks meets validated runs only: a mutated rank 1 next to an intact rank 0."""
    lines = [json.loads(ln) for ln in real_log.splitlines()]
    lines[0] = {**lines[0], "rank": 1, "world_size": 2}
    log_path(tmp_path, 0).write_bytes(real_log.replace(b'"world_size":1', b'"world_size":2', 1))
    step_at = next(i for i, r in enumerate(lines) if r["kind"] == "step")
    cases = 0
    for i in (0, step_at):
        for where in _paths(lines[i]):
            for value in (None, 2**70, [1]):
                mutated = [*lines[:i], _set(lines[i], where, value), *lines[i + 1:]]
                log_path(tmp_path, 1).write_text("".join(json.dumps(r) + "\n" for r in mutated))
                n = _check(tmp_path)
                assert n == len(_steps_in(real_log)), (where, value)   # rank 0's steps, always
                cases += 1
    assert cases > 80


def test_records_too_long_too_deep_and_with_crafted_sizes(tmp_path: Path, real_log: bytes) -> None:
    lines = real_log.splitlines(keepends=True)
    bad = [
        b'{"kind":"metrics","step":1,"values":{"a":"' + b"x" * (9 * 2**20) + b'"}}\n',   # over MAX_LINE_BYTES
        b'{"kind":"metrics","step":1,"values":' + b"[" * 100000 + b"\n",
        b'{"kind":"step","step":100,"layers":"' + b"A" * 4000 + b'"}\n',
        b'{"kind":"step","step":101,"layers":[' + b"null," * 5000 + b'null]}\n',
        b'{"kind":"grad_norms","steps":[[' + str(10**4000).encode() + b',1]]}\n',
        b'{"kind":"metrics","step":' + b"9" * 5000 + b',"values":{}}\n',
    ]
    path = log_path(tmp_path)
    path.write_bytes(b"".join(lines[:-1] + bad + lines[-1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)
        log = read_log(path)
    assert len(log.problems) == len(bad) + 1   # and the watch's own problem record
    assert [m.step for m in log.step_meta] == _steps_in(real_log)
    assert _check(tmp_path) == len(_steps_in(real_log))


def _frames(data: bytes) -> list[int]:
    """Start offsets of the records of a TFRecord file."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    return out


def test_damaged_event_files_never_raise(tmp_path: Path) -> None:
    src = write_tb_scalars(tmp_path / "src", {"val_loss": [(i, 1.0 / (i + 1)) for i in range(20)],
                                              "train_loss": [(i, 0.5) for i in range(20)]})
    good = src.read_bytes()
    starts = _frames(good)
    rng = random.Random(SEED + 2)
    target = tmp_path / "run" / src.name
    target.parent.mkdir()
    damaged: list[bytes] = [good[:cut] for cut in rng.sample(range(len(good)), 40)]
    for _ in range(60):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(data))
    for s in starts[1:6]:
        for field in (s, s + 8, s + 12, s + 12 + struct.unpack_from("<Q", good, s)[0]):   # length, crc, data
            data = bytearray(good)
            data[field] ^= 0xFF
            damaged.append(bytes(data))
    huge = bytearray(good)
    struct.pack_into("<Q", huge, starts[3], 2**63 - 1)
    damaged.append(bytes(huge))
    for data in damaged:
        target.write_bytes(data)
        problems: list[str] = []
        scalars = read_scalars(target.parent, warn=False, problems_out=problems)
        assert all(len(s.steps) <= 20 for s in scalars.values())
        assert _check(target.parent) == 0


_KILLED_WRITER = textwrap.dedent("""
    import sys
    from gradscope.store.jsonl import LogWriter
    w = LogWriter.open(sys.argv[1])
    w.write({"kind": "header", "schema": 1, "layers": [], "params": []})
    i = 0
    while True:   # until killed
        w.write({"kind": "metrics", "step": i, "values": {"train_loss": 1.0 / (i + 1)}, "pad": "x" * (i % 4000)})
        i += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL here")
def test_sigkill_mid_write_loses_at_most_the_last_line(tmp_path: Path) -> None:
    for k in range(3):
        d = tmp_path / f"run{k}"
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(d)], cwd=REPO)
        path = log_path(d)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < (k + 1) * 200_000):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = path.read_bytes()
        n_lines = data.count(b"\n")
        log = read_log(path, warn=False)
        assert len(log.metrics) in (n_lines - 1, n_lines)   # header + every complete line
        assert [m.step for m in log.metrics] == list(range(len(log.metrics)))
        assert len(log.problems) <= 1 and all("truncated record" in p for p in log.problems)


def _damaged_runs(root: Path, real_log: bytes) -> list[Path]:
    """One run folder per kind of damage."""
    rng = random.Random(SEED + 3)
    header_end = real_log.index(b"\n") + 1
    variants = {
        "truncated": real_log[:len(real_log) // 2],
        "truncated_header": real_log[:header_end // 2],
        "flipped": bytes(b ^ 0x20 if rng.random() < 0.01 else b for b in real_log),
        "garbage": bytes(rng.randrange(256) for _ in range(2000)),
        "deep": real_log[:header_end] + b"[" * 50000 + b"\n" + real_log[header_end:],
        "mutated_header": real_log.replace(b'"every":2', b'"every":1e999', 1),
        "mutated_step": real_log.replace(b'"step":2,', b'"step":-1,', 1),
        "second_header": real_log + real_log,
        "empty": b"",
    }
    dirs = []
    for name, data in variants.items():
        d = root / name
        d.mkdir(parents=True)
        log_path(d).write_bytes(data)
        dirs.append(d)
    tb = write_tb_scalars(root / "tb_truncated", {"val_loss": [(i, 1.0) for i in range(10)]})
    tb.write_bytes(tb.read_bytes()[:-5])
    dirs.append(tb.parent)
    return dirs


def test_report_cli_on_damaged_logs_exits_cleanly(tmp_path: Path, real_log: bytes) -> None:
    from gradscope.show.cli import main

    runner = CliRunner()
    for d in _damaged_runs(tmp_path, real_log):
        result = runner.invoke(main, ["report", str(d)])
        assert result.exit_code in (0, 1, 2), (d.name, result.exit_code, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (d.name, result.exception)
        assert "Traceback" not in result.output, d.name


def test_report_subprocess_on_a_folder_of_damaged_runs(tmp_path: Path, real_log: bytes) -> None:
    _damaged_runs(tmp_path, real_log)
    r = subprocess.run([sys.executable, "-m", "gradscope", "report", str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode in (0, 1, 2), r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
