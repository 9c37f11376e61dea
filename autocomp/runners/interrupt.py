"""Ctrl-C during a search: stop between candidates, so nothing half-done is left behind.

The first SIGINT only asks the searcher to stop; it finishes scoring and storing the candidates
in flight, then the search ends as interrupted (the CLI exits 130 and prints how to resume).
A second SIGINT stops at once, as Python's default handler would.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+


class GracefulStop:
    """Context manager: ``requested`` turns true at the first SIGINT inside the block."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping once the candidates being scored are stored (Ctrl-C again stops now).",
              file=sys.stderr, flush=True)
