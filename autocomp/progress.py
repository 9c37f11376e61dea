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
        # tqdm's monitor redraws a bar left alone for maxinterval (10 s by default) seconds, which would
        # undercut the interval: every 10-20 s on a fine-tune of 0.27 s steps
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
    return tqdm(iterable, **kwargs)
