"""What every searcher shares: the problem, the recorder and its settings.

A searcher's settings and their defaults are those of its preset, ``agents/<preset>.yaml``, the
only place they are written down; a subclass names its preset and any setting the runner fills
in (``runtime``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from autocomp.errors import ConfigError
from autocomp.presets import load_preset
from autocomp.problem import CompressionProblem
from autocomp.searchers.record import TrialRecorder
from autocomp.space import SearchSpace

META_KEYS = frozenset({"searcher", "name", "description", "episodes"})
"""Preset keys that describe the agent rather than set the searcher."""


class Searcher(ABC):
    """Proposes plans, evaluates them through the problem and records every candidate.

    Subclasses name their ``preset`` (whose settings, less its description, are every setting
    they accept, with their defaults) and implement :meth:`run`.
    """

    preset: ClassVar[str | None] = None
    runtime: ClassVar[dict[str, Any]] = {}  # settings the runner fills in (e.g. where to save a policy)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        preset = load_preset("agent", cls.preset) if cls.preset else {}
        cls.defaults = {**{k: v for k, v in preset.items() if k not in META_KEYS}, **cls.runtime}

    def __init__(self, problem: CompressionProblem, recorder: TrialRecorder, *, settings: dict[str, Any],
                 seed: int = 0, reward_kind: str = "error") -> None:
        self.problem = problem
        self.recorder = recorder
        self.settings = self.resolve(settings)
        self.seed = seed
        self.reward_kind = reward_kind

    @classmethod
    def resolve(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``settings``; an unknown key is an error naming the valid ones."""
        unknown = sorted(set(settings) - set(cls.defaults) - META_KEYS)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} for this agent: use {sorted(cls.defaults)}.")
        return {**cls.defaults, **{k: v for k, v in settings.items() if k in cls.defaults}}

    @classmethod
    def directions(cls, settings: dict[str, Any]) -> list[str]:
        return ["maximize"]

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        """Fail up front on settings that cannot work with ``episodes`` candidates."""

    @classmethod
    def check_space(cls, space: SearchSpace) -> None:
        """Fail up front on a search space this searcher cannot search."""

    @classmethod
    def check_problem(cls, problem: CompressionProblem, settings: dict[str, Any], episodes: int) -> None:
        """Fail before the run directory is made on a problem ``episodes`` candidates cannot search."""

    @abstractmethod
    def run(self, n_candidates: int) -> None:
        """Evaluate up to ``n_candidates`` new candidates, recording each one."""
