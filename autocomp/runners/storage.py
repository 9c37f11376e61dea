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

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend


def open_storage(run_dir: Path, kind: str) -> str | optuna.storages.BaseStorage:
    if kind == "sqlite":
        return f"sqlite:///{run_dir / 'study.db'}"
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return kind


def dashboard_target(run_dir: Path, kind: str) -> str:
    """What to pass to ``optuna-dashboard`` for this run."""
    if kind == "sqlite":
        return f"sqlite:///{run_dir / 'study.db'}"
    if kind == "journal":
        return str(run_dir / "study.journal")
    return kind
