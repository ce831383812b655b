"""One writer per log: exclusive, never through a symlink, and a full disk ends the log without raising."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from gradscope.errors import GradscopeWarning, LogError
from gradscope.store.jsonl import LogBusyError, LogWriter, log_path, read_log
from tests.logfactory import make_header, step_record

REPO = Path(__file__).resolve().parents[2]


def _write_steps(w: LogWriter, steps: range) -> None:
    header = make_header()
    if steps.start == 0:
        w.write(header.to_dict())
    for s in steps:
        w.write(step_record(s, header).to_dict())


def test_second_writer_in_the_same_process_gets_its_own_run_folder(tmp_path: Path) -> None:
    first = LogWriter.open(tmp_path)
    assert first.path == log_path(tmp_path)
    _write_steps(first, range(0, 3))
    with pytest.warns(GradscopeWarning, match="being written by another gradscope watch.*run-2"):
        second = LogWriter.open(tmp_path)
    assert second.path == log_path(tmp_path / "run-2")
    _write_steps(second, range(0, 5))
    _write_steps(first, range(3, 6))   # the first writer's log was neither cut nor interleaved
    first.close()
    second.close()
    assert [s.step for s in read_log(first.path).steps] == list(range(6))
    assert [s.step for s in read_log(second.path).steps] == list(range(5))


def test_third_writer_goes_to_run_3_and_direct_path_is_refused(tmp_path: Path) -> None:
    a = LogWriter.open(tmp_path)
    with pytest.warns(GradscopeWarning):
        b = LogWriter.open(tmp_path)
    with pytest.warns(GradscopeWarning):
        c = LogWriter.open(tmp_path)
    assert c.path == log_path(tmp_path / "run-3")
    with pytest.raises(LogBusyError, match="another gradscope watch"):
        LogWriter(a.path)
    for w in (a, b, c):
        w.close()


def test_other_ranks_do_not_collide(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ws = [LogWriter.open(tmp_path, rank=r) for r in range(3)]
    assert [w.path for w in ws] == [log_path(tmp_path, r) for r in range(3)]
    for w in ws:
        w.close()


def test_finished_log_is_replaced_with_a_warning_not_silently(tmp_path: Path) -> None:
    w = LogWriter.open(tmp_path)
    _write_steps(w, range(0, 4))
    w.close()
    with pytest.warns(GradscopeWarning, match="replacing the earlier log"):
        w2 = LogWriter.open(tmp_path)
    assert w2.path == log_path(tmp_path)   # no live writer: same place, as a re-run of the script expects
    _write_steps(w2, range(0, 2))
    w2.close()
    assert [s.step for s in read_log(w2.path).steps] == [0, 1]


_HOLDER = textwrap.dedent("""
    import sys
    from gradscope.store.jsonl import LogWriter
    w = LogWriter.open(sys.argv[1])
    w.write({"kind": "header", "schema": 1})
    print(w.path, flush=True)
    sys.stdin.readline()          # hold the log until the parent says so
    w.write({"kind": "close", "step": 0, "time": 0.0, "extra": {}})
    w.close()
""")


def test_second_process_on_the_same_logdir_gets_its_own_run_folder(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        held = Path(proc.stdout.readline().strip())
        assert held == log_path(tmp_path)
        with pytest.warns(GradscopeWarning, match="run-2"):
            mine = LogWriter.open(tmp_path)
        assert mine.path == log_path(tmp_path / "run-2")
        mine.write({"kind": "header", "schema": 1})
        mine.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = held.read_text().splitlines()
    assert [ln[:17] for ln in lines] == ['{"kind":"header",', '{"kind":"close","']   # intact, not cut


def test_symlink_at_the_log_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite\n")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    log_path(logdir).symlink_to(target)
    with pytest.raises(LogBusyError, match="not a regular file"):
        LogWriter(log_path(logdir))
    with pytest.warns(GradscopeWarning, match="not a regular file.*run-2"):
        w = LogWriter.open(logdir)
    w.write({"kind": "header", "schema": 1})
    w.close()
    assert target.read_text() == "do not overwrite\n"
    assert log_path(logdir).is_symlink() and w.path == log_path(logdir / "run-2")


def test_dangling_symlink_is_not_followed_either(tmp_path: Path) -> None:
    target = tmp_path / "would_be_created"
    log_path(tmp_path).symlink_to(target)
    with pytest.warns(GradscopeWarning):
        w = LogWriter.open(tmp_path)
    w.close()
    assert not target.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_at_the_log_path_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(log_path(tmp_path))
    with pytest.warns(GradscopeWarning, match="run-2"):
        w = LogWriter.open(tmp_path)
    w.close()


def test_unwritable_logdir_is_a_log_error_from_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LogError, match="cannot write the gradscope log"):
        LogWriter.open(blocker / "sub")


class _FullDisk:
    """A text file whose writes fail the way a full disk does (ENOSPC), after ``ok`` successful ones."""

    def __init__(self, ok: int) -> None:
        self.ok, self.lines, self.closed = ok, [], False

    def write(self, s: str) -> int:
        if self.ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok -= 1
        self.lines.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        raise OSError(errno.ENOSPC, "No space left on device")


def test_write_failure_warns_once_keeps_what_was_written_and_never_raises(tmp_path: Path) -> None:
    w = LogWriter(log_path(tmp_path))
    w._f.close()   # type: ignore[union-attr]
    fake = _FullDisk(ok=2)
    w._f = fake   # type: ignore[assignment]
    _write_steps(w, range(0, 1))   # header + step 0 fit
    with pytest.warns(GradscopeWarning, match="No space left on device.*training continues") as rec:
        _write_steps(w, range(1, 10))
    assert len(rec) == 1
    assert w.failed and w.closed and fake.closed
    assert len(fake.lines) == 2
    w.close()   # succeeds
    w.close()


def _can_mount_tmpfs(where: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_real_full_disk_on_a_64k_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it here")
    try:
        w = LogWriter.open(mnt)
        header = make_header()
        w.write(header.to_dict())
        with pytest.warns(GradscopeWarning, match="failed") as rec:
            for s in range(10_000):   # ~1 KB a record: the 64 KB disk is full long before the end
                w.write(step_record(s, header).to_dict())
        assert len(rec) == 1 and w.failed
        w.close()
        log = read_log(w.path, warn=False)   # a cut last line, if any, is a problem; the rest is read
        assert len(log.problems) <= 1
        assert len(log.steps) > 10
        assert [s.step for s in log.steps] == list(range(len(log.steps)))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)



def test_report_finds_both_runs_of_two_concurrent_writers(tmp_path: Path) -> None:
    from gradscope.store.load import load_runs

    a = LogWriter.open(tmp_path)
    with pytest.warns(GradscopeWarning):
        b = LogWriter.open(tmp_path)
    _write_steps(a, range(0, 3))
    _write_steps(b, range(0, 5))
    a.close()
    b.close()
    runs, problems = load_runs(tmp_path)
    assert [(r.name, r.steps.size) for r in runs] == [(tmp_path.name, 3), ("run-2", 5)]
    assert problems == []
