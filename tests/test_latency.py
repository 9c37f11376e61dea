"""The latency table: measured once per machine and layer shape, then reused; budgets enforced."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from autocomp.budget import parse_latency
from autocomp.config import SearchConfig
from autocomp.cost import CostModel
from autocomp.errors import BudgetFormatError
from autocomp.graph import LayerGraph
from autocomp.latency import LatencyTable
from autocomp.runners import run_search


@pytest.mark.slow
def test_latency_table_is_reused_from_cache_on_a_second_run(tmp_path, digits_model, digits_data) -> None:
    graph = LayerGraph.build(digits_model, digits_data.input_shape)
    cost = CostModel(graph)
    first = LatencyTable(graph, cost, threads=1, cache_dir=tmp_path)
    first.warm()
    assert first.measured == 25 * len({g.key() for g in first._whole}) and first.path.is_file()
    second = LatencyTable(graph, cost, threads=1, cache_dir=tmp_path)
    second.warm()
    assert second.measured == 0  # every layer shape came from the cache
    full = second.predict(cost.geometry(cost.defaults))
    quarter = second.predict(cost.geometry({"keep": np.maximum(1, cost.channels // 4)}))
    assert full == first.predict(cost.geometry(cost.defaults)) and 0 < quarter < full


@pytest.mark.slow
def test_latency_budget_is_enforced_and_measured(tmp_path) -> None:
    result = run_search(SearchConfig(budget_latency="0.95", agent="random", episodes=8, name="lat",
                                     runs_dir=str(tmp_path)), progress=False)
    summary = result.summary
    limit = summary["budgets"]["latency"]["limit"]
    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{result.run_dir / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 8 and all(0 < t.user_attrs["latency_us"] <= limit for t in trials)
    latency = summary["latency"]
    assert latency["best_predicted_ms"] * 1e3 <= limit
    assert latency["best_measured_ms"] > 0 and latency["baseline_measured_ms"] > 0


def test_latency_budget_formats() -> None:
    assert parse_latency("3ms", baseline_us=5000) == 3000
    assert parse_latency("800us", baseline_us=5000) == 800
    assert parse_latency("0.6", baseline_us=5000) == 3000
    with pytest.raises(BudgetFormatError, match="3ms"):
        parse_latency("3 parsecs", baseline_us=5000)
