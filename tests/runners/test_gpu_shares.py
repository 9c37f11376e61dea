"""CPU and GPU shares of Ray workers and sweep trials (the placement rules; the GPUs themselves are not here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.runners.ray_backend import check_cpus, gpus_per_worker
from autocomp.runners.sweep import load_sweep


class _Cluster:
    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 16.0, "GPU": self.gpus} if self.gpus else {"CPU": 16.0}


CUDA = torch.device("cuda")


def test_workers_split_the_clusters_gpus_evenly_at_most_one_each() -> None:
    config = SearchConfig()
    assert gpus_per_worker(_Cluster(1), config, 2, CUDA) == 0.5
    assert gpus_per_worker(_Cluster(4), config, 2, CUDA) == 1.0
    assert gpus_per_worker(_Cluster(1), config.replace(gpus_per_worker=0.25), 2, CUDA) == 0.25
    assert gpus_per_worker(_Cluster(1), config, 2, torch.device("cpu")) == 0.0  # CPU scoring asks for no GPU


def test_gpu_shares_that_do_not_fit_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="the Ray cluster has no GPUs"):
        gpus_per_worker(_Cluster(0), SearchConfig(), 2, CUDA)
    with pytest.raises(ConfigError, match="need 3 GPUs but the cluster has 1"):
        gpus_per_worker(_Cluster(1), SearchConfig(gpus_per_worker=1.0), 3, CUDA)
    with pytest.raises(ConfigError, match="--gpus-per-worker 1.5 must be in"):
        SearchConfig(gpus_per_worker=1.5)


def test_workers_that_cannot_all_get_their_cpus_name_the_fix() -> None:
    check_cpus(_Cluster(0), 4, 4)  # 16 CPUs: fits exactly
    with pytest.raises(ConfigError, match=r"--workers 2 x --threads 9 need 18 CPUs but the Ray cluster has 16"):
        check_cpus(_Cluster(0), 2, 9)


def test_sweep_trials_ask_for_their_gpu_share(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nbase: {budget_flops: 0.5}\ngrid: {seed: [0, 1]}\ngpus_per_trial: 0.5\n")
    assert load_sweep(sweep)["gpus_per_trial"] == 0.5
    sweep.write_text("name: s\nbase: {budget_flops: 0.5}\ngrid: {seed: [0]}\n")
    assert load_sweep(sweep)["gpus_per_trial"] == 0.0
    sweep.write_text("name: s\nbase: {budget_flops: 0.5}\ngrid: {seed: [0]}\ngpus_per_trial: lots\n")
    with pytest.raises(ConfigError, match="gpus_per_trial 'lots' must be a number >= 0"):
        load_sweep(sweep)
