"""Searchers, by the name agent presets give in ``searcher:``. Heavy backends load lazily."""

from __future__ import annotations

from autocomp.registry import Registry
from autocomp.searchers.base import Searcher

SEARCHERS: Registry[type[Searcher]] = Registry("searcher")
SEARCHERS.add("ddpg", "autocomp.searchers.ddpg:DDPGSearcher", help="AMC's DDPG agent (stable-baselines3)")
SEARCHERS.add("optuna", "autocomp.searchers.optuna_search:OptunaSearcher", help="Optuna TPE / NSGA-II")
SEARCHERS.add("evolution", "autocomp.searchers.evolution:EvolutionSearcher",
              help="EvoPress-style evolution with staged selection")
SEARCHERS.add("sensitivity", "autocomp.searchers.sensitivity:SensitivitySearcher",
              help="per-decision sensitivity, then the plan by dynamic programming")
SEARCHERS.add("morphnet", "autocomp.searchers.morphnet:MorphNetSearcher",
              help="MorphNet: widths from a short group-lasso training on batch-norm scales")
SEARCHERS.add("random", "autocomp.searchers.baselines:RandomSearcher", help="random plans")
SEARCHERS.add("uniform", "autocomp.searchers.baselines:UniformSearcher", help="one keep ratio for all units")

__all__ = ["SEARCHERS", "Searcher"]
