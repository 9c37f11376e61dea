"""Search settings as a frozen dataclass with a YAML/dict round-trip (``runs/<name>/config.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autocomp.errors import ConfigError


@dataclass(frozen=True)
class SearchConfig:
    """Everything ``autocomp search`` needs. Every field has a CLI flag of the same name.

    Example:
        >>> cfg = SearchConfig(budget_flops="0.5", agent="random", episodes=5)
        >>> SearchConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    model: str = "digits_cnn"
    weights: str | None = None
    num_classes: int | None = None
    data: str = "digits"
    data_dir: str | None = None
    mean: str | None = None
    std: str | None = None
    preprocess: str | None = None
    image_size: int | None = None
    val_size: int | None = None
    budget_flops: str | None = None
    budget_params: str | None = None
    budget_size: str | None = None
    budget_latency: str | None = None
    latency_threads: int = 1
    agent: str = "ddpg"
    agent_options: dict[str, Any] = field(default_factory=dict)
    space: str = "prune"
    episodes: int | None = None
    reward: str = "error"
    recalibrate: bool = True
    calib_batches: int = 4
    calib_batch_size: int = 128
    seed: int = 0
    threads: int | None = None
    name: str | None = None
    runs_dir: str = "runs"
    storage: str = "sqlite"
    workers: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if self.reward not in ("error", "error_log_flops"):
            raise ConfigError(f"--reward {self.reward} is not one of error, error_log_flops.")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"--episodes {self.episodes} must be at least 1.")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be at least 1.")
        if self.storage not in ("sqlite", "journal") and "://" not in self.storage:
            raise ConfigError(f"--storage {self.storage} is not sqlite, journal or a database URL (postgresql://...).")
        if self.calib_batches < 0 or self.calib_batch_size < 1:
            raise ConfigError("--calib-batches must be >= 0 and --calib-batch-size >= 1.")

    def budgets(self) -> dict[str, str | None]:
        return {"flops": self.budget_flops, "params": self.budget_params, "size": self.budget_size, "latency": self.budget_latency}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}: use {sorted(known)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)
