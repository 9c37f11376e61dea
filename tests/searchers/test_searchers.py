"""Every agent preset finishes a real digits search within budget, with every candidate stored."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

import autocomp
from autocomp.config import SearchConfig
from autocomp.cost import measure_cost
from autocomp.evaluate import accuracy
from autocomp.presets import list_presets
from autocomp.runners import run_search

EPISODES = {"ddpg": 30, "optuna": 25, "nsga2": 25, "random": 15, "uniform": 1, "evolution": 20, "sensitivity": 20, "morphnet": 8}
OPTIONS = {"morphnet": {"steps": 20}, "ddpg": {"warmup_episodes": 10}, "nsga2": {"population_size": 8}, "optuna": {"n_startup_trials": 8}}


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
    # the plans that can be the result: within budget and scored on every validation image
    # (probes of single layers are outside the budget by design, and marked in the dashboard)
    eligible = [t for t in trials if not t.user_attrs.get("probe") and t.user_attrs["val_images"] == len(digits_data.val)]
    assert eligible and all(t.user_attrs["macs"] <= limit for t in eligible)
    assert all(t.user_attrs["macs"] > limit and t.constraints["macs"] > 0 for t in trials if t.user_attrs.get("probe"))
    assert all(t.constraints["macs"] <= 0 for t in eligible)
    assert max(t.user_attrs["val_accuracy"] for t in eligible) == summary["best"]["val_accuracy"]
    best_trial = study.trials[summary["best"]["trial"]]
    assert best_trial.user_attrs["val_accuracy"] == summary["best"]["val_accuracy"]
    plan = json.loads((result.run_dir / "best" / "plan.json").read_text())
    assert plan["format"] == "autocomp.plan/3"
    assert plan["decisions"]["keep"] == best_trial.user_attrs["plan"]["keep"]

    model = autocomp.load_compressed(result.run_dir)
    assert measure_cost(model, (1, 8, 8)).macs == summary["best"]["flops"]
    assert accuracy(model, digits_data.test) == pytest.approx(summary["best"]["test_accuracy"])
    ratios = [k / plan["channels"][n] for n, k in plan["decisions"]["keep"].items()]
    assert all(0.2 - 1e-9 <= r <= 1.0 for r in ratios)  # the prune space's range


def spy_on_episode_end(monkeypatch, capture) -> None:
    """Call ``capture(searcher, model)`` right after each episode's rewards are rewritten."""
    from autocomp.searchers.ddpg import DDPGSearcher

    original = DDPGSearcher.end_episode

    def spy(self, model):
        capture(self, model)
        original(self, model)

    monkeypatch.setattr(DDPGSearcher, "end_episode", spy)


def test_ddpg_rewrites_episode_reward_to_every_step(monkeypatch, digits_problem) -> None:
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    study = optuna.create_study(directions=["maximize"])
    recorder = TrialRecorder(study, digits_problem, searcher="ddpg")
    searcher = DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 3}, seed=0)
    captured = {}

    def capture(self, model):
        captured["rewards"] = model.replay_buffer.rewards[: model.replay_buffer.pos, 0].copy()
        captured["noise"] = self.sigma

    spy_on_episode_end(monkeypatch, capture)
    searcher.run(5)
    steps = len(digits_problem.units)
    rewards = torch.tensor(captured["rewards"]).view(-1)
    # before the last step of the 5th episode is stored, its earlier steps carry its final reward
    last = rewards[4 * steps:]
    assert len(last) == steps - 1
    assert torch.allclose(last, torch.full_like(last, recorder.history[-1].metrics.val_accuracy - 1.0))
    for episode in range(4):
        chunk = rewards[episode * steps:(episode + 1) * steps]
        assert torch.allclose(chunk, torch.full_like(chunk, recorder.history[episode].metrics.val_accuracy - 1.0))
    assert captured["noise"] == pytest.approx(0.05)  # the last episode explores with noise_final


def test_ddpg_noise_decays_over_the_episode_budget(digits_problem) -> None:
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), digits_problem, searcher="ddpg")
    searcher = DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 10}, seed=0)
    searcher.total_episodes = 110
    sigmas = {}
    for seen in (0, 10, 60, 109):
        searcher._episodes_seen = seen
        sigmas[seen] = searcher.sigma
    assert sigmas[0] == sigmas[10] == pytest.approx(0.5)  # warm-up and the first learning episode
    assert sigmas[60] == pytest.approx(0.5 * 0.1 ** (50 / 99))  # geometric over the budget, not per episode
    assert sigmas[109] == pytest.approx(0.05)


def test_ddpg_never_samples_an_unrewarded_transition(monkeypatch, digits_problem) -> None:
    """Updates run after each episode, when all its transitions have their reward; the buffer keeps
    only the last ``buffer_episodes`` and rewrites rewards across its wrap-around."""
    from autocomp.searchers.ddpg import DDPGSearcher, EpisodeReplayBuffer
    from autocomp.searchers.record import TrialRecorder

    sampled = []
    original = EpisodeReplayBuffer._get_samples

    def spy(self, batch_inds, env=None):
        sampled.append(np.isnan(self.rewards[batch_inds, 0]).any())
        return original(self, batch_inds, env)

    monkeypatch.setattr(EpisodeReplayBuffer, "_get_samples", spy)
    recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), digits_problem, searcher="ddpg")
    searcher = DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 2, "buffer_episodes": 3,
                                                                 "batch_size": 8}, seed=0)
    captured = {}
    spy_on_episode_end(monkeypatch, lambda self, model: captured.update(buffer=model.replay_buffer))
    searcher.run(7)
    assert sampled and not any(sampled)  # updates happened, and none saw a missing reward
    buffer = captured["buffer"]
    steps = len(digits_problem.steps)
    assert buffer.buffer_size == 3 * steps and buffer.full  # bounded: it wrapped around
    held = buffer.rewards[:, 0]
    last = np.array([c.metrics.val_accuracy - 1.0 for c in recorder.history[-3:]], dtype=np.float32)
    # every slot holds the reward of one of the last three episodes, but the one the newest
    # episode's last step goes to (stored after the episode-end callback, still an evicted episode's)
    assert not np.isnan(held).any()
    assert np.isclose(held[:, None], last[None, :]).any(axis=1).sum() >= 3 * steps - 1


def test_episode_buffer_refuses_a_missing_reward() -> None:
    from gymnasium import spaces

    from autocomp.searchers.ddpg import EpisodeReplayBuffer

    buffer = EpisodeReplayBuffer(4, spaces.Box(0, 1, (2,)), spaces.Box(-1, 1, (1,)), device="cpu", n_envs=1)
    obs = np.zeros((1, 2), dtype=np.float32)
    buffer.add(obs, obs, np.zeros((1, 1)), np.zeros(1), np.array([False]), [{}])
    with pytest.raises(RuntimeError, match="no reward yet"):
        buffer.sample(1)
    buffer.rewrite([0], 0, -0.25)
    assert float(buffer.sample(1).rewards) == pytest.approx(0.0)  # -0.25 minus its own moving average


def test_ddpg_resume_refills_replay_buffer(monkeypatch, digits_problem, tmp_path) -> None:
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    study = optuna.create_study(directions=["maximize"], storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    settings = {"warmup_episodes": 3, "policy_file": str(tmp_path / "policy.pt")}
    DDPGSearcher(digits_problem, TrialRecorder(study, digits_problem, searcher="ddpg"), settings=settings, seed=0).run(5)
    recorder = TrialRecorder(study, digits_problem, searcher="ddpg")  # as a resumed run sees the storage
    assert len(recorder.history) == 5
    resumed = DDPGSearcher(digits_problem, recorder, settings=settings, seed=0)
    captured = {}

    def capture(self, model):
        captured.setdefault("pos", model.replay_buffer.pos)
        captured.setdefault("rewards", model.replay_buffer.rewards[: 5 * len(self.problem.units), 0].copy())

    spy_on_episode_end(monkeypatch, capture)
    resumed.run(1)
    steps = len(digits_problem.units)
    assert captured["pos"] == 5 * steps + steps - 1  # 5 replayed episodes + the new one's first steps
    expected = torch.tensor([c.metrics.val_accuracy - 1.0 for c in recorder.history[:5]]).repeat_interleave(steps)
    assert torch.allclose(torch.tensor(captured["rewards"]), expected.to(torch.float32))
    assert len(study.get_trials()) == 6


class SequentialBackend:
    """An evaluation backend that declares two workers but scores plans here, one by one."""

    workers = 2

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator
        self.calls: list[int] = []

    def score(self, plans, images=None):
        self.calls.append(len(plans))
        return [self.evaluator.score_plan(p, images) for p in plans]

    def close(self) -> None:
        pass


def test_ddpg_parallel_episodes_keep_their_own_rewards(monkeypatch, digits_model, digits_data) -> None:
    from autocomp.problem import CompressionProblem
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder
    from autocomp.space import SearchSpace

    def make() -> CompressionProblem:
        return CompressionProblem(model=digits_model, data=digits_data, space=SearchSpace.load("prune"),
                                  budgets={"flops": "0.5"})

    problem = make()
    backend = SequentialBackend(make().evaluator)
    problem.backend = backend
    recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), problem, searcher="ddpg")
    searcher = DDPGSearcher(problem, recorder, settings={"warmup_episodes": 2}, seed=0)
    assert searcher.n_envs == 2
    captured = {}

    def capture(self, model):
        captured["rewards"] = model.replay_buffer.rewards[: model.replay_buffer.pos].copy()

    spy_on_episode_end(monkeypatch, capture)
    searcher.run(6)
    assert len(recorder.history) == 6
    # three rounds of two episodes, both final plans scored together (one call when they coincide)
    assert len(backend.calls) == 3 and max(backend.calls) == 2
    steps = len(problem.units)
    rewards = torch.tensor(captured["rewards"])  # (positions, envs)
    for round_ in range(2):  # the first two rounds are fully stored
        for env in range(2):
            chunk = rewards[round_ * steps:(round_ + 1) * steps, env]
            expected = recorder.history[2 * round_ + env].metrics.val_accuracy - 1.0
            assert torch.allclose(chunk, torch.full_like(chunk, expected))


def test_ddpg_exploration_stays_in_bounds_and_centres_on_policy(digits_problem) -> None:
    from autocomp.env import LayerCompressEnv
    from autocomp.searchers.ddpg import AMCDDPG

    model = AMCDDPG("MlpPolicy", LayerCompressEnv(digits_problem), actor_lr=1e-4, critic_lr=1e-3, noise_sigma=0.5,
                    learning_starts=0, seed=0, device="cpu")
    model._last_obs = model.env.reset()
    policy_action, _ = model.predict(model._last_obs, deterministic=True)
    samples = np.array([model._sample_action(0)[0] for _ in range(400)]).reshape(-1)
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert np.mean(np.abs(samples) > 0.999) < 0.02  # resampled inside the bounds, not piled up by clipping
    assert samples.std() > 0.3
    model.noise_sigma = 0.0
    assert np.allclose(model._sample_action(0)[0], policy_action)


def test_optuna_batches_use_the_constant_liar() -> None:
    """Trials asked together for several workers are told apart (a sequential search asks one at a time)."""
    from autocomp.searchers.optuna_search import OptunaSearcher

    sampler = OptunaSearcher.sampler(OptunaSearcher.defaults, seed=0)
    assert sampler._constant_liar is True
    assert OptunaSearcher.sampler({**OptunaSearcher.defaults, "constant_liar": False}, seed=0)._constant_liar is False


def test_ddpg_learns_from_the_taken_actions(monkeypatch, digits_problem) -> None:
    """After each episode the buffer holds the actions taken (the projected plan) and the
    observations they meet, not what the policy asked for."""
    from autocomp.env import LayerCompressEnv
    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), digits_problem, searcher="ddpg")
    searcher = DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 3}, seed=0)
    captured = {}

    def capture(self, model):  # before the 5th episode ends, the first 4 are fully stored
        buffer = model.replay_buffer
        captured["actions"] = buffer.actions[: buffer.pos, 0].copy()
        captured["obs"] = buffer.observations[: buffer.pos, 0].copy()

    spy_on_episode_end(monkeypatch, capture)
    searcher.run(5)
    steps = len(digits_problem.steps)
    env = LayerCompressEnv(digits_problem)
    for episode in range(4):
        taken = np.asarray(recorder.history[episode].actions, dtype=np.float32)
        np.testing.assert_array_equal(captured["actions"][episode * steps:(episode + 1) * steps], taken)
        np.testing.assert_array_equal(captured["obs"][episode * steps:(episode + 1) * steps], env.observations(taken)[:-1])
        assert digits_problem.decode(taken) == recorder.history[episode].plan


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "cmaes", "gp", "qmc", "random"])
def test_optuna_samplers_learn_from_the_taken_values(sampler: str, digits_problem) -> None:
    """Every sampler by name; the trials it learns from carry the plan taken after projection,
    the same parameters as the run's study."""
    from autocomp.searchers.optuna_search import OptunaSearcher
    from autocomp.searchers.record import TrialRecorder

    settings = {"sampler": sampler, "n_startup_trials": 3, "population_size": 4}
    study = optuna.create_study(directions=OptunaSearcher.directions(settings))
    recorder = TrialRecorder(study, digits_problem, searcher="optuna")
    searcher = OptunaSearcher(digits_problem, recorder, settings=settings, seed=0)
    searcher.run(8)
    stored = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    learned = searcher.proposals.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(stored) == len(learned) == 8
    for mine, theirs, candidate in zip(stored, learned, recorder.history):
        assert mine.params == theirs.params == recorder.params(candidate.plan)
        assert mine.values == theirs.values
        assert candidate.metrics.macs <= digits_problem.limits["macs"]
    asked = searcher.proposals.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(asked) == 8  # proposals are not learned from: only what was taken


def test_a_new_optuna_search_starts_from_the_largest_uniform_plan(digits_problem) -> None:
    from autocomp.searchers.optuna_search import OptunaSearcher
    from autocomp.searchers.record import TrialRecorder

    for start, first_is_uniform in ((True, True), (False, False)):
        recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), digits_problem, searcher="optuna")
        # the uniform plan projected onto the budget (what is left of it filled up)
        plan = digits_problem.uniform_plan(digits_problem.largest_uniform_level())
        uniform, _ = digits_problem.decode_positions(recorder.positions(recorder.params(plan)))
        OptunaSearcher(digits_problem, recorder, settings={"start_uniform": start}, seed=0).run(2)
        assert (recorder.history[0].plan == uniform) is first_is_uniform
        assert recorder.history[1].plan != uniform


def test_unknown_sampler_is_refused() -> None:
    from autocomp.errors import ConfigError
    from autocomp.searchers.optuna_search import OptunaSearcher

    with pytest.raises(ConfigError, match=r"sampler='bogus' is not one of tpe, nsga2, cmaes"):
        OptunaSearcher.validate({"sampler": "bogus"}, 10)


def test_optuna_successive_halving_stops_plans_early(digits_problem) -> None:
    """With pruner=halving, plans are scored on growing slices of the validation images, most
    stop before the full score, each slice is a trial that says how many images it saw, and the
    result is always a fully scored plan."""
    from autocomp.searchers.optuna_search import OptunaSearcher
    from autocomp.searchers.record import TrialRecorder

    settings = {"pruner": "halving", "min_fraction": 0.125, "reduction_factor": 3, "n_startup_trials": 3}
    study = optuna.create_study(directions=["maximize"])
    recorder = TrialRecorder(study, digits_problem, searcher="optuna")
    searcher = OptunaSearcher(digits_problem, recorder, settings=settings, seed=0)
    assert searcher.stages() == [38, 114]  # 1/8 of 300 validation images, then 3x as many
    searcher.run(30)
    images = [t.user_attrs["val_images"] for t in study.get_trials()]
    assert len(images) == 30 and set(images) <= {38, 114, 300}
    # every plan passes the rungs in order; some stop before the full score (at which rung
    # depends on how the first plans compare, so no rung is required to stop one)
    assert images.count(38) >= images.count(114) >= images.count(300) >= 1
    assert images.count(300) < images.count(38)
    assert recorder.best.metrics.val_images == 300
    states = [t.state for t in searcher.proposals.get_trials()]
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states


def test_halving_needs_one_objective() -> None:
    from autocomp.errors import ConfigError
    from autocomp.searchers.optuna_search import OptunaSearcher

    with pytest.raises(ConfigError, match="pruner=halving needs a single objective"):
        OptunaSearcher.validate({"sampler": "nsga2", "pruner": "halving"}, 10)


def test_morphnet_refuses_a_space_without_channel_widths(tmp_path) -> None:
    from autocomp.errors import ConfigError

    config = SearchConfig(budget_size="0.5", agent="morphnet", space="quant", name="mq", runs_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="morphnet searches channel widths: space `quant`"):
        run_search(config, progress=False)
    assert not (tmp_path / "mq").exists()  # refused before the run directory is made


def test_ddpg_leaves_nothing_in_the_temp_directory(monkeypatch, tmp_path, digits_problem) -> None:
    import tempfile

    from autocomp.searchers.ddpg import DDPGSearcher
    from autocomp.searchers.record import TrialRecorder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    recorder = TrialRecorder(optuna.create_study(directions=["maximize"]), digits_problem, searcher="ddpg")
    DDPGSearcher(digits_problem, recorder, settings={"warmup_episodes": 1}, seed=0).run(3)
    assert len(recorder.history) == 3
    assert list(tmp_path.iterdir()) == []


def test_sensitivity_keeps_to_the_candidates_it_is_given(tmp_path) -> None:
    """Too few candidates for one probe per decision: one line before any run directory exists;
    just enough: one level per decision, and never more candidates than asked for."""
    from autocomp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sensitivity needs at least 6 candidates here .* not 5"):
        run_search(SearchConfig(budget_flops="0.5", agent="sensitivity", episodes=5, name="few", runs_dir=str(tmp_path)),
                   progress=False)
    assert not (tmp_path / "few").exists()
    summary = run_search(SearchConfig(budget_flops="0.5", agent="sensitivity", episodes=7, name="ok",
                                      runs_dir=str(tmp_path)), progress=False).summary
    assert summary["candidates"] == 7


def test_sensitivity_scores_each_technique_alone_in_a_combined_space(tmp_path) -> None:
    """In the joint space the knapsack's plan over every decision is scored beside the plan of
    each technique alone (the others uncompressed), all within the budget."""
    config = SearchConfig(budget_size="0.2", space="joint", agent="sensitivity", episodes=40, name="joint",
                          runs_dir=str(tmp_path), agent_options={"refine": False})
    result = run_search(config, progress=False)
    study = optuna.load_study(study_name="joint", storage=f"sqlite:///{result.run_dir / 'study.db'}")
    full = study.trials[0].user_attrs["plan"]  # the first probe: the uncompressed reference
    assert study.trials[0].user_attrs["probe"] and "rank" not in full
    plans = [t.user_attrs["plan"] for t in study.trials if not t.user_attrs.get("probe")]
    assert len(plans) >= 2 and result.summary["candidates"] == len(study.trials) <= 40
    assert all(t.user_attrs["size_bytes"] <= result.summary["budgets"]["size"]["limit"]
               for t in study.trials if not t.user_attrs.get("probe"))
    bits_only = [p for p in plans if p["keep"] == full["keep"] and "rank" not in p and p["bits"] != full["bits"]]
    keep_only = [p for p in plans if p["bits"] == full["bits"] and "rank" not in p and p["keep"] != full["keep"]]
    assert bits_only and keep_only
