"""Budgets: ``0.5`` (a fraction of the original model) or ``20M`` (an absolute amount).

Example:
    >>> parse_budget("0.5", baseline=40_000_000, flag="--budget-flops")
    20000000
    >>> parse_budget("20M", baseline=40_000_000, flag="--budget-flops")
    20000000
"""

from __future__ import annotations

import re

from autocomp.errors import BudgetFormatError

METRICS = {"flops": "macs", "params": "params", "size": "size_bytes", "latency": "latency_us"}
"""Budget name -> the ``Cost`` field it limits ("flops" budgets count MACs)."""

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KB": 10**3, "MB": 10**6, "GB": 10**9}


_TIME = {"us": 1, "ms": 10**3, "s": 10**6}


def to_us(seconds: float) -> float:
    """Seconds as the microseconds latency budgets and predictions count in (to the nanosecond)."""
    return round(seconds * 1e6, 3)


DRIFT = 0.03
"""The original's two timings in a latency search (before it, and in turn with the best plan after
it) further apart than this are worth a note: milliseconds then differ by the machine's load."""


def latency_drift(latency: dict) -> float | None:
    """How much slower (> 1) or faster the original ran at the end of a search than before it
    (``summary.json``'s ``latency.original_drift``), where more than :data:`DRIFT` apart; else ``None``."""
    drift = latency.get("original_drift")
    return drift if drift is not None and abs(drift - 1) > DRIFT else None


def parse_latency(text: str | float, *, baseline_us: float, flag: str = "--budget-latency") -> float:
    """A fraction of the original model's measured latency, or a time (``3ms``, ``800us``, ``0.1s``),
    in microseconds to the nanosecond (whole microseconds took up to 5% off the budget of a model
    that runs in 40 us).

    >>> parse_latency("3ms", baseline_us=5000), parse_latency("0.6", baseline_us=39.4)
    (3000.0, 23.64)
    """
    raw = str(text).strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(us|ms|s)", raw, flags=re.IGNORECASE)
    if match:
        limit = round(float(match.group(1)) * _TIME[match.group(2).lower()], 3)
        if limit <= 0:
            raise BudgetFormatError(f"{flag} {raw} is not above 0: give a time such as 3ms.")
        return limit
    if re.fullmatch(r"[0-9]*\.?[0-9]+", raw) is None:
        raise BudgetFormatError(f"{flag} {raw!r} is not a latency budget: give a fraction in (0, 1] such as 0.6, "
                                f"or a time such as 3ms or 800us.")
    parse_budget(raw, baseline=1, flag=flag)  # a fraction in (0, 1]
    return round(float(raw) * baseline_us, 3)


def parse_budget(text: str | float, *, baseline: int, flag: str) -> int:
    """Turn a fraction in (0, 1] or an absolute amount with a K/M/G suffix into an absolute limit."""
    raw = str(text).strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG][bB]?)?", raw)
    if raw.startswith("-"):
        raise BudgetFormatError(f"{flag} {raw} is below 0: give a fraction in (0, 1] such as 0.5, or an amount such as 20M.")
    if not match:
        raise BudgetFormatError(f"{flag} {raw!r} is not a budget: give a fraction in (0, 1] such as 0.5, or an amount such as 20M.")
    value, suffix = float(match.group(1)), (match.group(2) or "").upper()
    if suffix:
        limit = int(value * _SUFFIX[suffix])
        if limit <= 0:
            raise BudgetFormatError(f"{flag} {raw} is not above 0: give a positive amount such as 20M.")
        return limit
    if value > 1:
        raise BudgetFormatError(
            f"{flag} {raw} is above 1: a bare number is a fraction of the original model in (0, 1]; "
            f"for an absolute budget add a suffix (e.g. {raw}M)."
        )
    if value <= 0:
        raise BudgetFormatError(f"{flag} {raw} is not above 0: give a fraction in (0, 1] such as 0.5.")
    return int(value * baseline)
