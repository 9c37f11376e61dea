"""Runners tie data, model, problem, searcher and storage together."""

from __future__ import annotations

from autocomp.runners.local import SearchResult, run_search
from autocomp.runners.setup import prepare_model

__all__ = ["SearchResult", "prepare_model", "run_search"]
