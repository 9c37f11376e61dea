"""Scores of many candidates: a cache by plan, and an optional parallel backend (Ray workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from autocomp.cost import Cost
from autocomp.plan import Plan
from autocomp.problem.evaluator import Evaluator, Score


@dataclass(frozen=True)
class Metrics:
    """A scored candidate: its predicted cost and its measured score."""

    macs: int
    params: int
    size_bytes: int
    val_accuracy: float
    eval_seconds: float = 0.0
    forward_seconds: float = 0.0
    latency_us: float = 0.0  # predicted by the latency table, in microseconds (0 without a latency budget)
    val_images: int = 0  # validation images scored (fewer than the split's when a staged search stopped it early)

    @classmethod
    def of(cls, cost: Cost, score: Score) -> Metrics:
        return cls(cost.macs, cost.params, cost.size_bytes, score.val_accuracy, score.eval_seconds,
                   score.forward_seconds, cost.latency_us, score.val_images)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class EvaluationBackend(Protocol):
    """Scores many plans at once elsewhere (see ``autocomp.runners.ray_backend``)."""

    workers: int

    def score(self, plans: Sequence[Plan], images: int | None = None) -> list[Score]: ...

    def close(self) -> None: ...


@dataclass
class EvalStats:
    """Work actually done (cache hits excluded): fresh evaluations and their seconds."""

    evaluations: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0

    def add(self, metrics: Metrics) -> None:
        self.evaluations += 1
        self.seconds += metrics.eval_seconds
        self.forward_seconds += metrics.forward_seconds


class CachedScorer:
    """Evaluates plans once each (here, or on ``backend`` when one is attached); ``images``
    scores on the first validation images only (a staged search's early rounds)."""

    def __init__(self, evaluator: Evaluator, estimate: Callable[[Plan], Cost]) -> None:
        self.evaluator = evaluator
        self.estimate = estimate
        self.backend: EvaluationBackend | None = None
        self.stats = EvalStats()
        self._cache: dict[str, Metrics] = {}

    @property
    def val_size(self) -> int:
        return len(self.evaluator.val)

    def _key(self, plan: Plan, images: int | None) -> tuple[str, int]:
        return plan.key(), self.val_size if images is None else min(images, self.val_size)

    def _store(self, plan: Plan, score: Score) -> Metrics:
        metrics = Metrics.of(self.estimate(plan), score)
        self._cache[plan.key(), score.val_images] = metrics
        self.stats.add(metrics)
        return metrics

    def evaluate(self, plan: Plan, images: int | None = None) -> Metrics:
        """Validation accuracy and cost of ``plan`` (cached by plan and images scored)."""
        cached = self._cache.get(self._key(plan, images))
        return cached if cached is not None else self._store(plan, self.evaluator.score_plan(plan, images))

    def evaluate_many(self, plans: Sequence[Plan], images: int | None = None) -> list[Metrics]:
        """Evaluate several plans, in parallel when a backend is attached."""
        todo = list({p.key(): p for p in plans if self._key(p, images) not in self._cache}.values())
        if self.backend is not None and todo:
            for plan, score in zip(todo, self.backend.score(todo, images)):
                self._store(plan, score)
        return [self.evaluate(p, images) for p in plans]

    def remember(self, plan: Plan, metrics: Metrics) -> None:
        """Seed the cache with an evaluation done earlier (e.g. read back from storage)."""
        self._cache[plan.key(), metrics.val_images or self.val_size] = metrics

    @property
    def parallelism(self) -> int:
        """How many candidates can be scored at the same time (the backend's workers)."""
        return self.backend.workers if self.backend is not None else 1

    @property
    def batch_size(self) -> int:
        """How many candidates a batch searcher should propose at once: two per worker, so a
        worker that finishes a cheap plan early takes the next one instead of waiting."""
        return 1 if self.backend is None else 2 * self.backend.workers
