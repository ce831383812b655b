"""The one loader: ``load(logdir)`` finds every run under ``logdir`` (the folder itself and its subfolders),
reads each rank's gradscope log and the user's own TensorBoard scalars, and returns one ``Run`` per folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from gradscope.errors import GradscopeWarning, LogError
from gradscope.store.jsonl import log_files, read_log
from gradscope.store.merge import merge_ranks
from gradscope.store.run import Run, run_from_log
from gradscope.store.tb_scalars import EVENT_FILE_MARKER, canonical_metrics, read_scalars


def _is_run_dir(d: Path) -> bool:
    return bool(log_files(d)) or any(p.name.startswith("events.out.tfevents.") for p in d.iterdir() if p.is_file())


def find_run_dirs(logdir: str | os.PathLike[str]) -> list[Path]:
    """``logdir`` itself when it holds a run, and every subfolder that does, sorted."""
    root = Path(logdir)
    if not root.exists():
        raise LogError(f"{root}: no such directory")
    if root.is_file():
        return [root.parent]
    dirs = [root] if _is_run_dir(root) else []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for dn in dirnames:
            sub = Path(dirpath) / dn
            if _is_run_dir(sub):
                dirs.append(sub)
    return dirs


def load_run(run_dir: str | os.PathLike[str], *, name: str | None = None, warn: bool = True) -> Run:
    """One run folder: its gradscope log(s) and its TensorBoard scalars."""
    d = Path(run_dir)
    files = log_files(d)
    runs: list[Run] = []
    unreadable: list[str] = []
    for f in files:
        # One unreadable rank (a damaged header) must not hide the others: it becomes a problem of the run.
        try:
            runs.append(run_from_log(read_log(f, warn=warn), name=name))
        except LogError as e:
            if len(files) == 1:
                raise
            unreadable.append(f"{e} (this rank skipped)")
    if files and not runs:
        raise LogError(unreadable[0] if len(unreadable) == 1 else f"{unreadable[0]} (and every other rank)")
    run = merge_ranks(runs) if len(runs) > 1 else (runs[0] if runs else Run(name=name or d.name, path=d, header=None))
    run.problems.extend(unreadable)
    if warn:
        for msg in unreadable:
            warnings.warn(f"gradscope: {msg}", GradscopeWarning, stacklevel=2)
    if name is not None:
        run.name = name
    scalars = read_scalars(d, warn=warn, problems_out=run.problems)
    for key, series in canonical_metrics(scalars).items():
        # The user's scope.log() wins over a TensorBoard tag of the same meaning: it is the explicit one.
        run.metrics.setdefault(key, series)
    for tag, series in scalars.items():
        run.metrics.setdefault(f"tb:{tag}", series)
    return run


def load(logdir: str | os.PathLike[str], *, warn: bool = True) -> list[Run]:
    """Every run under ``logdir``. Raises ``LogError`` when there is none."""
    root = Path(logdir)
    dirs = find_run_dirs(root)
    if not dirs:
        if root.is_dir() and not any(root.iterdir()):
            raise LogError(f"{root}: empty directory, no gradscope log or TensorBoard scalars")
        raise LogError(f"{root}: no gradscope log (gradscope.rank*.jsonl) or TensorBoard event files found")
    runs = []
    for d in dirs:
        rel = d.relative_to(root) if d != root and root in d.parents else Path(".")
        name = root.name if str(rel) == "." else str(rel)
        runs.append(load_run(d, name=name, warn=warn))
    return runs


def load_runs(logdir: str | os.PathLike[str]) -> tuple[list[Run], list[str]]:
    """Every readable run under ``logdir`` and the problems met on the way (one line each).

    Unlike ``load`` one unreadable run folder (a newer schema, a log without header) does not
    hide the others: it becomes a problem line. Raises ``LogError`` when no run at all can be read, or when
    no run holds anything to judge (neither a gradscope log nor a user scalar).
    """
    root = Path(logdir)
    if root.is_file():
        # A log or event file names its run folder; anything else is a mistake worth saying so.
        if root not in log_files(root.parent) and not root.name.startswith(EVENT_FILE_MARKER):
            raise LogError(f"{root}: not a directory, a gradscope log or a TensorBoard event file")
        root = root.parent
        dirs = [root]   # that run only, not its neighbours' subfolders
    else:
        dirs = find_run_dirs(root)
    if not dirs:
        if root.is_dir() and not any(root.iterdir()):
            raise LogError(f"{root}: empty directory, no gradscope log or TensorBoard scalars")
        raise LogError(f"{root}: no gradscope log (gradscope.rank*.jsonl) or TensorBoard event files found")
    runs: list[Run] = []
    problems: list[str] = []
    errors: list[str] = []
    empty: list[str] = []
    for d in dirs:
        name = root.name if d == root else str(d.relative_to(root))
        try:
            run = load_run(d, name=name, warn=True)
        except LogError as e:
            errors.append(str(e))
            continue
        if not run.has_log and not run.metrics:
            empty.append(str(d))
            continue
        runs.append(run)
    if not runs:
        if errors:
            raise LogError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)")
        raise LogError(f"{empty[0] if len(empty) == 1 else root}: no gradscope log and no scalars in the "
                       "TensorBoard event files")
    problems += [f"{e} (run skipped)" for e in errors]
    problems += [f"{e}: no gradscope log and no scalars in its TensorBoard event files (skipped)"
                 for e in empty]
    return runs, problems
