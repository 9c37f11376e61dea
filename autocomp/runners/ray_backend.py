"""Ray workers that evaluate candidates in parallel (``autocomp search --workers N``).

Each worker is an actor holding an :class:`~autocomp.problem.Evaluator`: the model (rebuilt from its
spec and ``state_dict``), its layer graph (traced once, by the driver) and the validation and
calibration images, sent once through the object store. The driver keeps the
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

from autocomp.compress import Compressor
from autocomp.config import SearchConfig
from autocomp.device import bound_heap, bounds_heap
from autocomp.errors import ConfigError
from autocomp.plan import Plan
from autocomp.problem import CompressionProblem, Evaluator, Score

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
    """One Ray actor: an evaluator of its own (the model, its layer graph, the calibration and
    validation images); no search space, budget or cost model."""

    def __init__(self, payload: dict[str, Any], threads: int, device: str) -> None:
        from autocomp.models import build_model

        torch.set_num_threads(threads)  # this actor's own process
        if payload["low_memory"]:
            bound_heap()
        model = build_model(payload["model"], num_classes=payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
        graph = payload["graph"]
        self.evaluator = Evaluator(model, graph, val=payload["val"], calibration=payload["calibration"],
                                   settings=payload["evaluation"], compressor=Compressor(model.eval(), graph, payload["ranges"]),
                                   device=device)  # a GPU actor sees its GPU(s) as cuda:0 (Ray sets CUDA_VISIBLE_DEVICES)

    def score(self, plan: dict[str, Any], images: int | None = None) -> dict[str, float]:
        return self.evaluator.score_plan(Plan.from_dict(plan), images).to_dict()

    def pid(self) -> int:
        return os.getpid()


def gpus_per_worker(ray: Any, config: SearchConfig, workers: int, device: torch.device) -> float:
    """Each worker's share of a GPU: ``--gpus-per-worker``, or with a cuda device the cluster's
    GPUs split evenly over the workers (at most one each; 2 workers on 1 GPU get 0.5 each)."""
    if device.type != "cuda":
        return 0.0
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0:
        raise ConfigError("--device cuda with Ray workers, but the Ray cluster has no GPUs: start it on GPU "
                          "machines (ray start ... --num-gpus N), or pass --device cpu.")
    share = config.gpus_per_worker or min(1.0, gpus / workers)
    if share * workers > gpus + 1e-9:
        raise ConfigError(f"--workers {workers} with --gpus-per-worker {share} need {share * workers:g} GPUs but the "
                          f"cluster has {gpus:g}: lower one of them.")
    return share


def check_cpus(ray: Any, workers: int, threads: int) -> None:
    """Each worker holds ``threads`` CPUs for its life: workers that cannot all be placed would
    wait for CPUs that never come free, so stop with the fix instead."""
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if workers * threads > cpus:
        raise ConfigError(f"--workers {workers} x --threads {threads} need {workers * threads} CPUs but the Ray cluster "
                          f"has {cpus:g}: lower --workers or --threads (each worker holds --threads CPUs).")


class RayBackend:
    """Plugs into :class:`CompressionProblem` as its evaluation backend: scores plans on Ray actors,
    each plan going to whichever actor is free first (``ray.util.ActorPool``). A worker that dies
    is restarted by Ray and its task retried, so no candidate is lost."""

    def __init__(self, problem: CompressionProblem, config: SearchConfig, *, workers: int, threads: int = 1) -> None:
        ray = import_ray()
        from ray.util import ActorPool

        self.ray = ray
        self.workers = workers
        evaluator = problem.evaluator
        payload = {
            "model": config.model, "num_classes": problem.data.num_classes,
            "state_dict": {k: v.detach().cpu() for k, v in problem.model.state_dict().items()},
            "graph": problem.graph, "ranges": dict(problem.space.ranges), "evaluation": evaluator.settings,
            "calibration": evaluator.calibration, "val": evaluator.val, "low_memory": bounds_heap(config.low_memory, problem.data.input_shape),
        }
        check_cpus(ray, workers, threads)
        self.gpus = gpus_per_worker(ray, config, workers, evaluator.device)
        self._payload = ray.put(payload)  # held for the backend's life: restarted actors read it again
        actor = ray.remote(num_cpus=threads, num_gpus=self.gpus, max_restarts=-1, max_task_retries=3)(EvalWorker)
        device = "cuda" if self.gpus > 0 else "cpu"
        self.actors = [actor.remote(self._payload, threads, device) for _ in range(workers)]
        self.ray.get([a.pid.remote() for a in self.actors])  # fail here, not mid-search, if workers cannot start
        self.pool = ActorPool(self.actors)

    def score(self, plans: Sequence[Plan], images: int | None = None) -> list[Score]:
        """Scores of ``plans``, in their order (on the first ``images`` validation images)."""
        results = self.pool.map(lambda actor, plan: actor.score.remote(plan.to_dict(), images), list(plans))
        return [Score(**r) for r in results]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
