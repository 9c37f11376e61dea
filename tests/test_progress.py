"""Progress bars redraw ten times a second on a terminal, and at most every 30 s into a log file."""

from __future__ import annotations

import io
import sys

from autocomp.progress import LOG_INTERVAL, bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_redraws_rarely_where_stderr_is_a_log_file(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with bar(total=5, file=out) as logged:
        assert logged.mininterval == LOG_INTERVAL
        assert logged.maxinterval >= LOG_INTERVAL  # tqdm's monitor would redraw it every 10 s otherwise
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with bar(total=5, file=out) as shown:
        assert shown.mininterval < 1 and shown.maxinterval == 10  # tqdm's defaults
    with bar(total=5, file=out, mininterval=2.0) as asked:  # a caller's own interval is kept
        assert asked.mininterval == 2.0
