"""Search settings as a frozen dataclass with a YAML/dict round-trip (``runs/<name>/config.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autocomp.errors import ConfigError

RUN_FIELDS = ("name", "runs_dir", "episodes", "threads", "workers", "address", "device", "loader_workers",
              "cache_mb", "gpus_per_worker", "low_memory")
"""Where a run lives, how long it goes on and what it runs on: a resumed run may change these.
Every other field says what is searched, and a resumed run keeps it."""


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
    resize: int | None = None
    val_size: int | None = None
    budget_flops: str | None = None
    budget_params: str | None = None
    budget_size: str | None = None
    budget_latency: str | None = None
    latency_threads: int = 1
    latency_batch: int = 1
    runtime: str = "onnxruntime"
    agent: str = "sensitivity"
    agent_options: dict[str, Any] = field(default_factory=dict)
    space: str = "auto"  # resolved for the model when the search starts (autocomp.space.AUTO)
    warm_start: str | None = None
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
    device: str = "auto"
    gpus_per_worker: float | None = None
    loader_workers: int | None = None
    cache_mb: int = 2048
    # bound the heap (autocomp.device.bound_heap): lower peak memory, slower; None: for big inputs only
    low_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.reward not in ("error", "error_log_flops"):
            raise ConfigError(f"--reward {self.reward} is not one of error, error_log_flops.")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"--episodes {self.episodes} must be at least 1.")
        if self.warm_start not in (None, "sensitivity"):
            raise ConfigError(f"--warm-start {self.warm_start} is not a searcher that can start a search: use sensitivity.")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be at least 1.")
        if self.storage not in ("sqlite", "journal") and "://" not in self.storage:
            raise ConfigError(f"--storage {self.storage} is not sqlite, journal or a database URL (postgresql://...).")
        if self.runtime not in ("onnxruntime", "torch"):
            raise ConfigError(f"--runtime {self.runtime} is not one of onnxruntime, torch.")
        if self.latency_batch < 1 or self.latency_threads < 1:
            raise ConfigError(f"--latency-batch {self.latency_batch} and --latency-threads {self.latency_threads} "
                              "must be at least 1.")
        if self.calib_batches < 0 or self.calib_batch_size < 1:
            raise ConfigError("--calib-batches must be >= 0 and --calib-batch-size >= 1.")
        for flag, value in (("--image-size", self.image_size), ("--resize", self.resize)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value} must be a positive number of pixels (e.g. 224).")
        if self.resize is not None and self.image_size is not None and self.resize < self.image_size:
            raise ConfigError(f"--resize {self.resize} is smaller than --image-size {self.image_size}: the centre crop "
                              "is taken after resizing, so pass --resize >= --image-size (e.g. --resize 256 --image-size 224).")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ConfigError(f"--loader-workers {self.loader_workers} must be 0 (read in the main process) or more.")
        if self.cache_mb < 0:
            raise ConfigError(f"--cache-mb {self.cache_mb} must be 0 (stream everything) or more.")
        if self.gpus_per_worker is not None and not 0 < self.gpus_per_worker <= 1:
            raise ConfigError(f"--gpus-per-worker {self.gpus_per_worker} must be in (0, 1]: e.g. 0.5 puts two workers on each GPU.")

    def check_start(self, *, resume: bool) -> None:
        """What a search needs before it starts: a name to resume, a budget to start afresh."""
        if resume and not self.name:
            raise ConfigError("--resume needs --name NAME of the run to continue (name= in the Python API).")
        if not resume and not any(self.budgets().values()):
            raise ConfigError("no budget given: pass --budget-flops (e.g. 0.5), --budget-params (e.g. 100K), "
                              "--budget-size (e.g. 0.125 or 200KB) and/or --budget-latency (e.g. 0.6 or 3ms).")

    def resumed(self, stored: SearchConfig, *, source: str) -> SearchConfig:
        """The settings of a resumed run: ``stored`` (read from ``source``), with this config's
        name, runs_dir and the run fields it sets (``episodes`` may be raised).

        A field outside :data:`RUN_FIELDS` that this config sets to something other than both
        its default and the stored value is an error: the run would silently ignore it.

        Example:
            >>> stored = SearchConfig(budget_flops="0.5", name="x")
            >>> SearchConfig(name="x", episodes=20).resumed(stored, source="runs/x/config.yaml").episodes
            20
        """
        default = SearchConfig()
        changed = [
            f"{f.name} is {getattr(self, f.name)} here but {getattr(stored, f.name)} in {source}"
            for f in dataclasses.fields(self)
            if f.name not in RUN_FIELDS
            and not _same(getattr(self, f.name), getattr(default, f.name))
            and not _same(getattr(self, f.name), getattr(stored, f.name))
        ]
        if changed:
            flags = "the flag" if len(changed) == 1 else "the flags"
            raise ConfigError(f"--resume: {', '.join(changed)}: drop {flags} to continue the run, "
                              "or start a new run with another --name.")
        run = {k: getattr(self, k) for k in RUN_FIELDS if not _same(getattr(self, k), getattr(default, k))}
        return stored.replace(**{**run, "name": self.name, "runs_dir": self.runs_dir})

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


def _same(a: Any, b: Any) -> bool:
    """Equal, or equal as text: a budget given as 0.5 in Python and as "0.5" on the command line."""
    return bool(a == b) or (a is not None and b is not None and str(a) == str(b))
