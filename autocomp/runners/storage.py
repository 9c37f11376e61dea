"""Where a run's trials live.

- ``sqlite`` (default): ``runs/<name>/study.db``. One writer at a time: the search driver
  writes every trial itself (Ray workers only evaluate), so this is enough for one search.
- ``journal``: ``runs/<name>/study.journal``, Optuna's append-only journal with file locks:
  safe for many processes on one host writing the same study (Optuna advises against SQLite
  for parallel writers).
- a database URL (``postgresql://...``, ``mysql://...``): for writers on several hosts; a
  journal file on NFS is not safe.
"""

from __future__ import annotations

import os

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from autocomp.rundir import RunDir


def open_storage(run_dir: str | os.PathLike[str], kind: str) -> str | optuna.storages.BaseStorage:
    """The storage of the run in ``run_dir`` (a path or a :class:`RunDir`)."""
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(RunDir(run_dir).study_journal)))
    return dashboard_target(run_dir, kind)


def dashboard_target(run_dir: str | os.PathLike[str], kind: str) -> str:
    """What to pass to ``optuna-dashboard`` for this run."""
    run = RunDir(run_dir)
    if kind == "sqlite":
        return f"sqlite:///{run.study_db}"
    if kind == "journal":
        return str(run.study_journal)
    return kind
