"""Errors raised for bad input. Each message states the rule, the bad value and the fix."""

from __future__ import annotations


class AutocompError(Exception):
    """Root of every error autocomp raises on purpose; the CLI prints these as one line."""


class UnknownNameError(AutocompError, KeyError):
    """A registry name (model, dataset, agent, space) that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InfeasibleBudgetError(AutocompError):
    """A budget that no plan of the search space can meet."""


class BudgetFormatError(AutocompError, ValueError):
    """A budget given in a form autocomp cannot read (e.g. above 1, negative)."""


class IncompatibleModelError(AutocompError):
    """Weights or data that do not fit the model."""


class DataError(AutocompError):
    """A data set that is missing or malformed."""


class ConfigError(AutocompError, ValueError):
    """Settings (presets, overrides, run directories) that cannot be used as given."""
