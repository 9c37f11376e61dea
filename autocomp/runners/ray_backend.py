"""Ray workers that evaluate candidates in parallel (``autocomp search --workers N``).

Each worker is an actor holding the model (rebuilt from its spec and ``state_dict``) and the
validation and calibration images, sent once through the object store. The driver keeps the
search and the storage; workers only score plans. A worker that dies is restarted by Ray and
its task retried, so no candidate is lost.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from autocomp.config import SearchConfig
from autocomp.data import DataBundle, Split
from autocomp.errors import ConfigError
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, Metrics
from autocomp.space import SearchSpace

RAY_MISSING = "Ray is not installed: pip install 'autocomp[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def connect(address: str | None, *, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` ('auto' or HOST:PORT), or start a local Ray sized to the machine."""
    if address is not None:
        _use_token_if_present()  # before Ray is imported: it reads its auth mode once
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address is None:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        return ray
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--address {address} is not HOST:PORT or auto (e.g. --address 127.0.0.1:6379).")
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                pass
        except OSError as exc:
            raise ConfigError(
                f"no Ray cluster answers at --address {address} ({exc.__class__.__name__}): start one with "
                f"`ray start --head --port {port}` there, or drop --address to run locally."
            ) from None
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise ConfigError(
            f"could not join the Ray cluster at --address {address} ({str(exc).splitlines()[0]}). If it uses token "
            "authentication, set RAY_AUTH_TOKEN to the output of `ray get-auth-token` on its head node."
        ) from None
    return ray


def _use_token_if_present() -> None:
    """Ray clusters started where a token exists require it; a token-mode client also joins
    clusters without authentication, so send it whenever one is at hand."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


class EvalWorker:
    """One Ray actor: a private copy of the problem that scores plans."""

    def __init__(self, payload: dict[str, Any], threads: int) -> None:
        from autocomp.models import build_model

        torch.set_num_threads(threads)
        model = build_model(payload["model"], num_classes=payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
        data = DataBundle(name=payload["data_name"], train=Split(*payload["calibration"]), val=Split(*payload["val"]),
                          test=Split(payload["val"][0][:0], payload["val"][1][:0]), num_classes=payload["num_classes"],
                          class_names=(), preprocess=payload["preprocess"])
        self.problem = CompressionProblem(model=model, data=data, space=SearchSpace.from_dict(payload["space"]),
                                          budgets={k: v for k, v in payload["budgets"].items() if k != "latency"},  # the driver predicts latency
                                          evaluation=payload["evaluation"])

    def evaluate(self, plan: dict[str, Any]) -> dict[str, float]:
        return self.problem.evaluate(Plan.from_dict(plan)).to_dict()

    def pid(self) -> int:
        return os.getpid()


class RayBackend:
    """Plugs into :class:`CompressionProblem` as its evaluation backend."""

    def __init__(self, problem: CompressionProblem, config: SearchConfig, *, workers: int, threads: int = 1) -> None:
        ray = import_ray()
        self.ray = ray
        self.workers = workers
        payload = {
            "model": config.model, "num_classes": problem.data.num_classes, "data_name": problem.data.name,
            "state_dict": {k: v.detach().cpu() for k, v in problem.model.state_dict().items()},
            "calibration": (problem.calibration.x, problem.calibration.y), "val": (problem.data.val.x, problem.data.val.y),
            "preprocess": problem.data.preprocess, "space": problem.space.to_dict(), "budgets": problem.budgets,
            "evaluation": problem.evaluation,
        }
        self._payload = ray.put(payload)  # held for the backend's life: restarted actors read it again
        actor = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=3)(EvalWorker)
        self.actors = [actor.remote(self._payload, threads) for _ in range(workers)]
        self.ray.get([a.pid.remote() for a in self.actors])  # fail here, not mid-search, if workers cannot start

    def evaluate(self, plans: Sequence[Plan]) -> list[Metrics]:
        """Hand each plan to whichever worker is free first (plans differ in cost)."""
        queue = list(enumerate(plans))
        results: list[Metrics | None] = [None] * len(plans)
        idle = list(self.actors)
        pending: dict[Any, tuple[int, Any]] = {}
        while queue or pending:
            while idle and queue:
                actor = idle.pop()
                index, plan = queue.pop(0)
                pending[actor.evaluate.remote(plan.to_dict())] = (index, actor)
            done, _ = self.ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            results[index] = Metrics(**self.ray.get(done[0]))
            idle.append(actor)
        return [m for m in results if m is not None]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
