"""autocomp: search per-layer compression plans for a trained PyTorch model under a hard budget.

Example:
    >>> import autocomp
    >>> summary = autocomp.search(budget_flops="0.5", agent="optuna", episodes=50)  # doctest: +SKIP
    >>> model = autocomp.load_compressed(f"runs/{summary['name']}")  # doctest: +SKIP
"""

from __future__ import annotations

from autocomp.api import load_compressed, search
from autocomp.config import SearchConfig
from autocomp.errors import (
    AutocompError,
    BudgetFormatError,
    ConfigError,
    DataError,
    IncompatibleModelError,
    InfeasibleBudgetError,
    UnknownNameError,
)
from autocomp.plan import Plan

__version__ = "0.1.0"

__all__ = [
    "AutocompError", "BudgetFormatError", "ConfigError", "DataError", "IncompatibleModelError",
    "InfeasibleBudgetError", "Plan", "SearchConfig", "UnknownNameError", "load_compressed", "search",
]
