"""autocomp: search per-layer compression plans for a trained PyTorch model under a hard budget.

Example:
    >>> import autocomp
    >>> summary = autocomp.search(budget_flops="0.5", agent="optuna", episodes=50)  # doctest: +SKIP
    >>> run = f"runs/{summary['name']}"  # doctest: +SKIP
    >>> autocomp.finetune(run, epochs=2)  # doctest: +SKIP
    >>> autocomp.export(run, fmt="onnx")  # doctest: +SKIP
    >>> autocomp.report(run)  # doctest: +SKIP
    >>> model = autocomp.load_compressed(run, finetuned=True)  # doctest: +SKIP
"""

from __future__ import annotations

from autocomp.api import dashboard, export, finetune, inspect, load_compressed, report, search, sweep
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
from autocomp.rundir import RunDir

__version__ = "0.1.0"

__all__ = [
    "AutocompError", "BudgetFormatError", "ConfigError", "DataError", "IncompatibleModelError",
    "InfeasibleBudgetError", "Plan", "RunDir", "SearchConfig", "UnknownNameError", "dashboard", "export",
    "finetune", "inspect", "load_compressed", "report", "search", "sweep",
]
