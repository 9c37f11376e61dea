"""Progress bars for long work: tqdm, redrawn ten times a second on a terminal; where stderr is
not a terminal (a log file, a batch job, a Ray worker) at most once every :data:`LOG_INTERVAL`
seconds, so a long search leaves a readable log instead of megabytes of redraws.

Example:
    >>> with bar(total=3, desc="work", disable=True) as b:
    ...     b.update(3)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0
"""Seconds between a bar's updates where stderr is not a terminal."""


def bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (any tqdm keyword), updated at most every :data:`LOG_INTERVAL` seconds where
    stderr is not a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, **kwargs)
