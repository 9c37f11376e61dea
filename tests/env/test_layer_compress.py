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


def test_greedy_actions_are_clipped_to_keep_budget_reachable(digits_problem) -> None:
    env = LayerCompressEnv(digits_problem)
    env.reset()
    kept = []
    for _ in digits_problem.units:
        _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
        kept.append(info["taken"]["keep_ratio"] < info["wanted"]["keep_ratio"])
    assert any(kept), "asking to keep everything must be clipped under a 0.5 budget"
    # the budget is used, not wasted: within one channel step of the limit
    assert info["metrics"].macs > 0.45 * digits_problem.cost.baseline.macs


def test_observation_tracks_removed_macs(digits_problem) -> None:
    env = LayerCompressEnv(digits_problem)
    obs0, _ = env.reset()
    obs1, *_ = env.step(np.array([-1.0], dtype=np.float32))
    assert obs0[7] == 0.0 and obs1[7] > 0.0  # MACs removed so far
    assert obs1[9] < 1.0  # previous keep ratio
