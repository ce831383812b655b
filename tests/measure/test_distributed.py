"""DDP and FSDP2 on this CPU with gloo: every rank logs, ``load`` merges the ranks, nothing hangs.

Two real processes (``torch.multiprocessing.spawn`` in a subprocess with a timeout) train the same model on
two halves of each batch; one process trains on the whole batch as the reference. Under DDP and FSDP2 with
a mean loss the two are the same computation, so the merged statistics must equal the reference's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from gradscope.errors import GradscopeWarning
from gradscope.store.jsonl import log_files, read_log
from gradscope.store.load import load_run
from gradscope.store.merge import merge_ranks
from gradscope.store.run import Run, run_from_log

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from tests.measure import dist_worker  # noqa: E402

TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(logdir: Path) -> tuple[list[subprocess.CompletedProcess[str]], float]:
    """Both ranks as plain processes (what torchrun does, minus its agent); each is waited on with a timeout."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.measure.dist_worker", str(logdir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "RANK": str(r),
                                   "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in range(2)]
    t0 = time.perf_counter()
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done, time.perf_counter() - t0


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[subprocess.CompletedProcess[str]], float]:
    root = tmp_path_factory.mktemp("dist")
    procs, took = _launch(root)
    return root, procs, took


@pytest.fixture(scope="module")
def runs(launched: tuple[Path, list[subprocess.CompletedProcess[str]], float]) -> dict[str, Run]:
    root, procs, _ = launched
    for k in ("ddp", "fsdp"):
        assert len(log_files(root / k)) == 2, procs[0].stderr[-3000:] + procs[1].stderr[-3000:]
    dist_worker.reference(root / "ref")
    return {k: load_run(root / k) for k in ("ddp", "fsdp", "ref")}


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_merged_ranks_equal_one_process_on_the_whole_batch(runs: dict[str, Run], kind: str) -> None:
    run, ref = runs[kind], runs["ref"]
    assert run.ranks == 2 and run.completed
    assert run.steps.tolist() == ref.steps.tolist() == list(range(dist_worker.STEPS))
    close = {"rtol": 2e-4, "atol": 1e-6}
    for f in ("count", "mean", "var", "absmax", "zero_frac", "grad_norm", "dmean"):
        np.testing.assert_allclose(run.layer(f), ref.layer(f), err_msg=f"{kind} layer {f}", **close)
    assert run.layer("count")[0, 0] == 2 * dist_worker.PER_RANK * 32
    # Parameter gradients are read after the all-reduce (DDP) / combined from the shards (FSDP2): they are
    # the gradients of the whole batch, not of one rank's half.
    np.testing.assert_allclose(run.param("grad_norm"), ref.param("grad_norm"), err_msg=kind, **close)
    np.testing.assert_allclose(run.param("norm"), ref.param("norm"), err_msg=kind, **close)
    np.testing.assert_allclose(run.grad_norm, ref.grad_norm, **close)
    np.testing.assert_allclose(run.all_grad_norm, ref.all_grad_norm, **close)
    ratio = run.param("update_ratio")[:-1]
    np.testing.assert_allclose(ratio, ref.param("update_ratio")[:-1], rtol=1e-3, atol=1e-7)
    assert run.header.extra.get("sharded", False) is (kind == "fsdp")


def test_each_rank_wrote_its_own_log_with_local_statistics(runs: dict[str, Run]) -> None:
    files = log_files(runs["ddp"].path)
    assert [f.name for f in files] == ["gradscope.rank0.jsonl", "gradscope.rank1.jsonl"]
    rank1 = run_from_log(read_log(files[1]))
    assert rank1.header.rank == 1 and rank1.header.world_size == 2
    assert rank1.layer("count")[0, 0] == dist_worker.PER_RANK * 32          # one rank saw half the batch
    assert runs["ddp"].layer("count")[0, 0] == 2 * rank1.layer("count")[0, 0]
    assert not np.allclose(rank1.layer("mean")[0], runs["ref"].layer("mean")[0])   # its own half's statistics
    # TensorBoard mirrors only rank 0 (every rank writes its own gradscope log).
    assert not list(runs["ddp"].path.glob("events.out.tfevents.*"))


def test_a_rank_that_raises_does_not_hang_the_run(
        launched: tuple[Path, list[subprocess.CompletedProcess[str]], float]) -> None:
    root, (rank0, rank1), took = launched
    assert rank1.returncode != 0 and "rank 1 fails on purpose at step 2" in rank1.stderr
    # Rank 0 was inside a gradient all-reduce when rank 1 died: gloo fails it (connection closed, or the
    # 20 s process-group timeout at worst) and the run ends; nothing waits forever.
    assert rank0.returncode != 0
    assert took < TIMEOUT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)
        run = load_run(root / "raise")
    assert run.ranks == 2
    assert run.steps[:2].tolist() == [0, 1]    # both ranks' records up to the failure are there
    assert run.completed                        # both closed their logs on the way out (``with`` / __exit__)


def test_merge_dead_units_is_the_minimum_over_ranks_and_mismatched_logs_are_not_merged(
        runs: dict[str, Run]) -> None:
    a = runs["ref"]
    b = Run(**{**a.__dict__})
    b.layer_stats = {k: v.copy() for k, v in a.layer_stats.items()}
    a2 = Run(**{**a.__dict__})
    a2.layer_stats = {k: v.copy() for k, v in a.layer_stats.items()}
    a2.layer_stats["dead"][:, 0] = 5.0
    b.layer_stats["dead"][:, 0] = 3.0
    b.layer_stats["mean"][:, 0] += 1.0
    merged = merge_ranks([a2, b])
    assert (merged.layer("dead")[:, 0] == 3.0).all()        # dead on the union only if dead on every rank
    np.testing.assert_allclose(merged.layer("mean")[:, 0], a.layer("mean")[:, 0] + 0.5)
    # the spread between the ranks' means adds to the variance (parallel-variance formula)
    np.testing.assert_allclose(merged.layer("var")[:, 0], a.layer("var")[:, 0] + 0.25, rtol=1e-9)
    other = Run(**{**runs["ddp"].__dict__})   # layer names "module.0" ...: another model
    bad = merge_ranks([a, other])
    assert bad.ranks == 2 and any("not merged" in p for p in bad.problems)
