"""What every searcher shares: the problem, the recorder and its settings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import optuna

from autocomp.errors import ConfigError
from autocomp.problem import CompressionProblem
from autocomp.searchers.record import TrialRecorder


class Searcher(ABC):
    """Proposes plans, evaluates them through the problem and records every candidate.

    Subclasses declare ``defaults`` (every setting they accept) and implement :meth:`run`.
    """

    defaults: ClassVar[dict[str, Any]] = {}

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
        unknown = sorted(set(settings) - set(cls.defaults) - {"searcher", "name", "description", "episodes"})
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} for this agent: use {sorted(cls.defaults)}.")
        return {**cls.defaults, **{k: v for k, v in settings.items() if k in cls.defaults}}

    @classmethod
    def directions(cls, settings: dict[str, Any]) -> list[str]:
        return ["maximize"]

    @classmethod
    def sampler(cls, settings: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler | None:
        return None

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        """Fail up front on settings that cannot work with ``episodes`` candidates."""

    @abstractmethod
    def run(self, n_candidates: int) -> None:
        """Evaluate up to ``n_candidates`` new candidates, recording each one."""
