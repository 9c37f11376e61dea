"""Every agent preset finishes a real digits search within budget, with every candidate stored."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

import autocomp
from autocomp.config import SearchConfig
from autocomp.cost import measure_cost
from autocomp.evaluate import accuracy
from autocomp.presets import list_presets
from autocomp.runners import run_search

EPISODES = {"ddpg": 30, "optuna": 25, "nsga2": 25, "random": 15, "uniform": 1}
OPTIONS = {"ddpg": {"warmup_episodes": 10}, "nsga2": {"population_size": 8}, "optuna": {"n_startup_trials": 8}}


def test_every_preset_is_covered() -> None:
    assert set(list_presets("agent")) == set(EPISODES)


@pytest.mark.parametrize("agent", sorted(EPISODES))
def test_digits_search_within_budget(agent: str, tmp_path, digits_data) -> None:
    config = SearchConfig(budget_flops="0.5", agent=agent, episodes=EPISODES[agent], name=agent,
                          runs_dir=str(tmp_path), agent_options=OPTIONS.get(agent, {}))
    result = run_search(config, progress=False)
    summary = result.summary
    limit = summary["budgets"]["flops"]["limit"]
    assert summary["candidates"] == EPISODES[agent]
    assert summary["best"]["flops"] <= limit
    assert summary["input_shape"] == [1, 8, 8]
    for key in ("flops", "params", "size_bytes", "val_accuracy", "test_accuracy"):
        assert key in summary["baseline"] and key in summary["best"]

    study = optuna.load_study(study_name=agent, storage=f"sqlite:///{result.run_dir / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == EPISODES[agent]
    assert all(t.user_attrs["macs"] <= limit for t in trials)
    assert max(t.user_attrs["val_accuracy"] for t in trials) == summary["best"]["val_accuracy"]

    model = autocomp.load_compressed(result.run_dir)
    assert measure_cost(model, (1, 8, 8)).macs == summary["best"]["flops"]
    assert accuracy(model, digits_data.test) == pytest.approx(summary["best"]["test_accuracy"])
    plan = json.loads((result.run_dir / "best" / "plan.json").read_text())
    assert all(0.2 - 1e-9 <= u["keep_ratio"] <= 1.0 for u in plan["units"])  # the prune space's range


def test_ddpg_rewrites_episode_reward_to_every_step(tmp_path, digits_problem) -> None:
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    study = optuna.create_study(directions=["maximize"])
    recorder = TrialRecorder(study, digits_problem, searcher="ddpg")
    searcher = DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 3}, seed=0)
    captured = {}
    original = DDPGSearcher.end_episode

    def spy(self, model):  # inspect the replay buffer right after each episode's rewrite
        captured["rewards"] = model.replay_buffer.rewards[: model.replay_buffer.pos, 0].copy()
        captured["noise"] = self.noise.sigma
        original(self, model)

    DDPGSearcher.end_episode = spy
    try:
        searcher.run(5)
    finally:
        DDPGSearcher.end_episode = original
    steps = len(digits_problem.units)
    rewards = torch.tensor(captured["rewards"]).view(-1)
    # before the last step of the 5th episode is stored, its earlier steps carry its final reward
    last = rewards[4 * steps:]
    assert len(last) == steps - 1
    assert torch.allclose(last, torch.full_like(last, recorder.history[-1].metrics.val_accuracy - 1.0))
    for episode in range(4):
        chunk = rewards[episode * steps:(episode + 1) * steps]
        assert torch.allclose(chunk, torch.full_like(chunk, recorder.history[episode].metrics.val_accuracy - 1.0))
    assert captured["noise"] == pytest.approx(0.5 * 0.95 ** 1)  # decayed once: 4 episodes seen, 3 warm-up


def test_ddpg_resume_refills_replay_buffer(digits_problem, tmp_path) -> None:
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    study = optuna.create_study(directions=["maximize"], storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    settings = {"warmup_episodes": 3, "policy_file": str(tmp_path / "policy.pt")}
    DDPGSearcher(digits_problem, TrialRecorder(study, digits_problem, searcher="ddpg"), settings=settings, seed=0).run(5)
    recorder = TrialRecorder(study, digits_problem, searcher="ddpg")  # as a resumed run sees the storage
    assert len(recorder.history) == 5
    resumed = DDPGSearcher(digits_problem, recorder, settings=settings, seed=0)
    assert resumed.noise.sigma == pytest.approx(0.5 * 0.95 ** 2)
    captured = {}

    def capture(self, model):
        captured.setdefault("pos", model.replay_buffer.pos)
        captured.setdefault("rewards", model.replay_buffer.rewards[: 5 * len(self.problem.units), 0].copy())

    original = DDPGSearcher.end_episode
    DDPGSearcher.end_episode = lambda self, model: (capture(self, model), original(self, model))
    try:
        resumed.run(1)
    finally:
        DDPGSearcher.end_episode = original
    steps = len(digits_problem.units)
    assert captured["pos"] == 5 * steps + steps - 1  # 5 replayed episodes + the new one's first steps
    expected = torch.tensor([c.metrics.val_accuracy - 1.0 for c in recorder.history[:5]]).repeat_interleave(steps)
    assert torch.allclose(torch.tensor(captured["rewards"]), expected.to(torch.float32))
    assert len(study.get_trials()) == 6
