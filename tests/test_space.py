"""Search spaces as data: every preset drives both learned searchers; several budgets hold at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import autocomp
from autocomp.budget import parse_budget
from autocomp.config import SearchConfig
from autocomp.env import LayerCompressEnv
from autocomp.errors import ConfigError, InfeasibleBudgetError
from autocomp.evaluate import accuracy
from autocomp.graph import LayerGraph
from autocomp.ops import pack_model, payload_bytes
from autocomp.presets import list_presets
from autocomp.problem import CompressionProblem
from autocomp.runners import run_search
from autocomp.space import SearchSpace


def model_for_graph():
    from autocomp.models import build_model

    return build_model("digits_cnn", num_classes=10)


PRESETS = ["prune", "prune_fine", "prune_coarse", "quant", "lowrank", "prune_quant", "joint"]
SEARCHERS = {"ddpg": ({"warmup_episodes": 6}, 10), "optuna": ({"n_startup_trials": 5}, 10)}


TRANSFORMER_PRESETS = ["transformer", "transformer_quant", "transformer_lowrank"]  # searched in tests/test_coverage.py
INT8_PRESETS = ["int8", "prune_int8"]  # searched in tests/ops/test_int8.py


def test_every_space_preset_is_covered() -> None:
    assert set(list_presets("space")) == set(PRESETS) | set(TRANSFORMER_PRESETS) | set(INT8_PRESETS)


@pytest.mark.parametrize("space", PRESETS)
@pytest.mark.parametrize("agent", sorted(SEARCHERS))
def test_both_searchers_finish_a_digits_search_in_every_space(space: str, agent: str, tmp_path, digits_data) -> None:
    options, episodes = SEARCHERS[agent]
    flops = None if space == "quant" else "0.9"  # quantisation alone removes no MACs
    config = SearchConfig(budget_size="0.3", budget_flops=flops, agent=agent, episodes=episodes, space=space,
                          name="s", runs_dir=str(tmp_path), agent_options=options)
    result = run_search(config, progress=False)
    summary = result.summary
    limits = {k: v["limit"] for k, v in summary["budgets"].items()}
    assert summary["candidates"] == episodes
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{result.run_dir / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == episodes
    assert all(t.user_attrs["size_bytes"] <= limits["size"] for t in trials)
    assert all(t.user_attrs["macs"] <= limits.get("flops", np.inf) for t in trials)
    declared = SearchSpace.load(space).actions
    # the searchers really take the space's actions, and only those
    plans = [t.user_attrs["plan"] for t in trials]
    assert any(p.get("bits") for p in plans) == ("bits" in declared)
    assert any(p.get("rank") for p in plans) == ("rank_ratio" in declared)
    if "keep_ratio" not in declared:
        channels = {u.name: u.channels for u in LayerGraph.build(model_for_graph(), (1, 8, 8)).units}
        assert all(p["keep"] == channels for p in plans)
    if space in ("quant", "prune_quant", "joint"):  # the rules: first conv and classifier at 8 bits
        first, classifier = summary["layers"][0], summary["layers"][-1]
        assert all(p["bits"][first] == 8 and p["bits"][classifier] == 8 for p in plans)
    model = autocomp.load_compressed(result.run_dir)
    assert payload_bytes(pack_model(model)) == summary["best"]["size_bytes"]
    assert accuracy(model, digits_data.test) == pytest.approx(summary["best"]["test_accuracy"])


@pytest.mark.parametrize("space", ["prune_quant", "joint"])
def test_multi_action_env_is_valid_and_every_episode_feasible(space: str, digits_model, digits_data) -> None:
    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load(space),
                                 budgets={"flops": "0.6", "size": "0.15"})
    env = LayerCompressEnv(problem)
    assert env.action_space.shape == (len(SearchSpace.load(space).actions),)
    check_env(env, skip_render_check=True)
    rng = np.random.default_rng(0)
    for policy in ("max", "random", "min"):
        env.reset()
        terminated, info = False, {}
        while not terminated:
            action = {"max": np.ones(env.action_space.shape), "min": -np.ones(env.action_space.shape),
                      "random": rng.uniform(-1, 1, env.action_space.shape)}[policy].astype(np.float32)
            obs, _, terminated, _, info = env.step(action)
            assert env.observation_space.contains(obs)
        cost = problem.cost.predict(info["plan"])
        assert cost.macs <= problem.limits["macs"] and cost.size_bytes <= problem.limits["size_bytes"]


def test_clipping_fills_the_budget_when_asking_for_everything(digits_model, digits_data) -> None:
    problem = CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("quant"),
                                 budgets={"size": "0.2"})
    plan = problem.decode(np.ones((len(problem.steps), 1)))
    size = problem.cost.predict(plan).size_bytes
    assert size <= problem.limits["size_bytes"]
    assert size > 0.8 * problem.limits["size_bytes"]  # clipped to what fits, not to the minimum
    assert set(plan.get("bits").values()) - {8} and plan.get("bits")[problem.graph.first] == 8


def test_infeasible_mixed_budget_names_the_budget_that_cannot_be_met(digits_model, digits_data) -> None:
    # quantisation alone never removes MACs: the size budget is reachable, the MACs budget is not
    with pytest.raises(InfeasibleBudgetError, match=r"budget_flops=0\.5 .*infeasible") as err:
        CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("quant"),
                           budgets={"size": "0.5", "flops": "0.5"})
    assert "budget_size" not in str(err.value)
    with pytest.raises(InfeasibleBudgetError, match=r"budget_size=0\.001 .*--budget-size"):
        CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune_quant"),
                           budgets={"size": "0.001", "flops": "0.5"})


def test_infeasible_budget_on_the_command_line_is_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autocomp", "search", "--space", "quant", "--budget-size", "0.5",
                           "--budget-flops", "0.5", "--agent", "uniform", "--runs-dir", str(tmp_path), "--no-progress"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "budget_flops" in proc.stderr and "Traceback" not in proc.stderr


def test_size_budgets_in_bytes() -> None:
    assert parse_budget("200KB", baseline=10**6, flag="--budget-size") == 200_000
    assert parse_budget("1.5MB", baseline=10**7, flag="--budget-size") == 1_500_000
    assert parse_budget("0.125", baseline=1_096_168, flag="--budget-size") == 137_021


@pytest.mark.parametrize(("text", "message"), [
    ("actions: {bits: {choices: [1, 4]}}", "integers in 2..8 or 32"),
    ("actions: {rank_ratio: {min: 0, max: 1}}", "0 < min <= max <= 1"),
    ("actions: {prune: {min: 0.2}}", "cannot apply"),
    ("actions: {bits: {choices: [4]}}\nrules: [{bits: off}]", "no `layers:` list"),
    ("actions: {head_dim: {min: 0.5, round_to: 0}}", "positive width"),
    ("actions: {head_dim: {min: 0.5, step: 4}}", "unknown field"),
    ("actions: {keep_ratio: {min: 0.5, min_counts: 0}}", "positive number of kept-channel counts"),
])
def test_bad_space_files_fail_with_the_rule(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(f"name: bad\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        SearchSpace.load(str(path))


def test_packed_export_matches_the_predicted_size_and_reloads(tmp_path) -> None:
    run = run_search(SearchConfig(budget_size="0.25", space="joint", agent="random", episodes=6, name="q",
                                  runs_dir=str(tmp_path)), progress=False)
    from autocomp.exporting import export_run, load_packed

    info = export_run(run.run_dir, fmt="packed")
    assert info["payload_bytes"] == run.summary["best"]["size_bytes"]
    assert info["max_abs_diff"] == 0.0
    model = load_packed(run.run_dir, run.run_dir / "export" / "model.packed.pt")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), autocomp.load_compressed(run.run_dir)(x))
    saved = json.loads((run.run_dir / "export" / "export-packed.json").read_text())
    assert saved["size_bytes"] > saved["payload_bytes"]  # the file adds names and metadata to the tensors


def test_finetuning_a_quantised_run_keeps_it_quantised(tmp_path, digits_data) -> None:
    from autocomp.exporting import export_run, load_packed
    from autocomp.finetuning import finetune_run

    run = run_search(SearchConfig(budget_size="0.15", space="quant", agent="uniform", name="q", runs_dir=str(tmp_path)),
                     progress=False)
    result = finetune_run(run.run_dir, epochs=1, progress=False)
    info = export_run(run.run_dir, fmt="packed", finetuned=True)
    assert info["payload_bytes"] == run.summary["best"]["size_bytes"]  # same bits, same bytes after training
    assert info["max_abs_diff"] == 0.0  # the trained weights are still on their grid: packing loses nothing
    model = load_packed(run.run_dir, run.run_dir / "export" / "model.packed.pt")
    assert accuracy(model, digits_data.test) == pytest.approx(result["test_accuracy"])


def test_presets_load_from_an_installed_wheel(monkeypatch) -> None:
    """In a wheel the preset folders are namespace packages, which ``importlib.resources`` gives
    as a ``MultiplexedPath`` (no ``glob``, no path string): listing and loading still work."""
    from importlib import resources

    from autocomp import presets

    try:
        from importlib.resources.readers import MultiplexedPath
    except ImportError:  # Python 3.10
        from importlib.readers import MultiplexedPath
    source = {kind: Path(presets.__file__).resolve().parent.parent / folder for kind, folder in presets._SOURCE_DIRS.items()}
    packages = {presets.PRESET_PACKAGES[kind]: MultiplexedPath(str(path)) for kind, path in source.items()}
    monkeypatch.setattr(resources, "files", lambda package: packages[package])
    assert "prune" in presets.list_presets("space") and "evolution" in presets.list_presets("agent")
    assert SearchSpace.load("prune").name == "prune"
    assert presets.load_preset("agent", "sensitivity")["searcher"] == "sensitivity"


def test_auto_is_resolved_for_a_model_before_it_is_loaded() -> None:
    from autocomp.errors import ConfigError
    from autocomp.space import AUTO, resolve_space_name

    assert resolve_space_name(AUTO, attention=True) == "transformer" and resolve_space_name("joint", attention=True) == "joint"
    with pytest.raises(ConfigError, match="depends on the model"):
        SearchSpace.load(AUTO)
