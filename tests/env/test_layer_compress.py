"""The Gymnasium environment: checkers pass and every episode ends within budget."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autocomp.env import ENV_ID, LayerCompressEnv


def test_gymnasium_checker(digits_problem) -> None:
    gym_check_env(LayerCompressEnv(digits_problem), skip_render_check=True)


def test_sb3_checker(digits_problem) -> None:
    sb3_check_env(LayerCompressEnv(digits_problem), warn=False)


def test_registered_id(digits_problem) -> None:
    env = gymnasium.make(ENV_ID, problem=digits_problem)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("policy", ["max", "min", "random"])
def test_every_episode_is_feasible(digits_problem, policy: str) -> None:
    env = LayerCompressEnv(digits_problem)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.reset()
        terminated, steps, info = False, 0, {}
        while not terminated:
            action = {"max": 1.0, "min": -1.0, "random": rng.uniform(-1, 1)}[policy]
            obs, reward, terminated, truncated, info = env.step(np.array([action], dtype=np.float32))
            assert env.observation_space.contains(obs) and not truncated
            steps += 1
        assert steps == len(digits_problem.units)
        assert info["metrics"].macs <= digits_problem.limits["macs"]
        assert reward == pytest.approx(info["metrics"].val_accuracy - 1.0)


def test_greedy_actions_are_projected_onto_the_budget(digits_problem) -> None:
    env = LayerCompressEnv(digits_problem)
    env.reset()
    info: dict = {}
    for _ in digits_problem.units:
        _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    taken = np.asarray(info["taken_actions"])
    assert (taken < 1.0).any(), "asking to keep everything must be cut back under a 0.5 budget"
    # the budget is spent, not wasted
    assert info["metrics"].macs >= 0.97 * digits_problem.limits["macs"]
    assert info["metrics"].macs <= digits_problem.limits["macs"]


def test_observations_of_taken_actions_match_an_episode_that_asks_for_them(digits_problem) -> None:
    env = LayerCompressEnv(digits_problem)
    rng = np.random.default_rng(3)
    env.reset()
    info: dict = {}
    for _ in digits_problem.units:
        *_, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    taken = info["taken_actions"]
    replayed = env.observations(taken)
    observed = [env.reset()[0]]
    for row in taken:
        obs, *_, last = env.step(np.asarray(row, dtype=np.float32))
        observed.append(obs)
    np.testing.assert_array_equal(replayed, np.stack(observed))
    assert last["plan"] == info["plan"]  # a taken plan projects onto itself


def test_observation_tracks_removed_macs(digits_problem) -> None:
    env = LayerCompressEnv(digits_problem)
    obs0, _ = env.reset()
    obs1, *_ = env.step(np.array([-1.0], dtype=np.float32))
    assert obs0[7] == 0.0 and obs1[7] > 0.0  # MACs removed so far
    assert obs1[9] < 1.0  # previous keep ratio
