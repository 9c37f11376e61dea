"""AMC's DDPG agent, built on stable-baselines3's ``DDPG``.

AMC-faithful details (He et al. 2018), set in ``agents/ddpg.yaml``:
- ``warmup_episodes`` of random actions before any update (SB3's ``learning_starts``);
- truncated-normal exploration noise whose sigma decays per episode after warm-up;
- discount 1, and the episode's final reward copied to every transition of that episode
  (rewritten in the replay buffer when the episode ends);
- separate actor and critic learning rates, 300x300 hidden units, tau 0.01, batch 64.

On ``--resume`` the replay buffer is rebuilt from the trials in storage and the last saved
policy weights are reloaded, so no earlier episode is lost to the agent either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from autocomp.env import LayerCompressEnv
from autocomp.errors import ConfigError
from autocomp.searchers.base import Searcher


class TruncatedNormalNoise(ActionNoise):
    """Gaussian noise truncated at +-2 sigma; ``sigma`` is changed in place to decay it."""

    def __init__(self, sigma: float, size: int, seed: int = 0) -> None:
        super().__init__()
        self.sigma = sigma
        self.size = size
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        if self.sigma <= 0:
            return np.zeros(self.size)
        return truncnorm.rvs(-2, 2, scale=self.sigma, size=self.size, random_state=self._rng)


class AMCDDPG(DDPG):
    """SB3's DDPG with AMC's separate actor (1e-4) and critic (1e-3) learning rates."""

    def __init__(self, *args: Any, actor_lr: float, critic_lr: float, **kwargs: Any) -> None:
        self.actor_lr = actor_lr
        self.critic_lr = critic_lr
        super().__init__(*args, learning_rate=critic_lr, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.actor_lr

    def _update_learning_rate(self, optimizers: Any) -> None:
        self.logger.record("train/learning_rate", self.critic_lr)
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.actor_lr
        for group in self.critic.optimizer.param_groups:
            group["lr"] = self.critic_lr


class EpisodeCallback(BaseCallback):
    """Copies each episode's reward to all its transitions, decays noise, records candidates."""

    def __init__(self, searcher: DDPGSearcher, n_episodes: int) -> None:
        super().__init__()
        self.searcher = searcher
        self.n_episodes = n_episodes
        self.done_episodes = 0
        self._episode_start: int | None = None
        self._actions: list[float] = []

    def _on_training_start(self) -> None:
        self.searcher.replay_history(self.model)

    def _on_step(self) -> bool:
        buffer = self.model.replay_buffer
        if self._episode_start is None:
            self._episode_start = buffer.pos  # this step's transition is stored at pos, after on_step
        self._actions.append(float(np.asarray(self.locals["actions"]).reshape(-1)[0]))
        if not self.locals["dones"][0]:
            return True
        final = float(self.locals["rewards"][0])
        buffer.rewards[self._episode_start:buffer.pos, 0] = final
        info = self.locals["infos"][0]
        self.searcher.recorder.record(info["plan"], info["metrics"], actions=self._actions)
        self.searcher.end_episode(self.model)
        self._episode_start, self._actions = None, []
        self.done_episodes += 1
        return self.done_episodes < self.n_episodes


class DDPGSearcher(Searcher):
    defaults = {
        "warmup_episodes": 100, "hidden": [300, 300], "actor_lr": 1e-4, "critic_lr": 1e-3, "tau": 0.01,
        "gamma": 1.0, "batch_size": 64, "noise_sigma": 0.5, "noise_decay": 0.95, "policy_file": None,
    }

    @classmethod
    def validate(cls, settings: dict[str, Any], episodes: int) -> None:
        s = cls.resolve(settings)
        if episodes <= s["warmup_episodes"]:
            raise ConfigError(
                f"--episodes {episodes} is not above warmup_episodes={s['warmup_episodes']}: DDPG would only take "
                f"random actions and learn nothing. Use --episodes > {s['warmup_episodes']} or "
                f"--agent-opt warmup_episodes=N with N < {episodes}."
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = LayerCompressEnv(self.problem, reward_kind=self.reward_kind)
        self.steps = len(self.problem.units)
        self.noise = TruncatedNormalNoise(float(self.settings["noise_sigma"]), 1, seed=self.seed)
        self._episodes_seen = len(self.recorder.history)
        self._decay_noise(self._episodes_seen)

    def _decay_noise(self, episodes: int) -> None:
        after_warmup = max(0, episodes - int(self.settings["warmup_episodes"]))
        self.noise.sigma = float(self.settings["noise_sigma"]) * float(self.settings["noise_decay"]) ** after_warmup

    def end_episode(self, model: DDPG) -> None:
        self._episodes_seen += 1
        self._decay_noise(self._episodes_seen)
        if self.settings["policy_file"]:
            torch.save(model.policy.state_dict(), self.settings["policy_file"])

    def replay_history(self, model: DDPG) -> None:
        """Put every earlier episode from storage back into the replay buffer (resume)."""
        env = LayerCompressEnv(self.problem, reward_kind=self.reward_kind)  # SB3 owns self.env's episode
        for candidate in self.recorder.history:
            obs, _ = env.reset()
            reward_value = None
            for action in candidate.actions[: self.steps]:
                next_obs, r, terminated, _, info = env.step(np.array([action], dtype=np.float32))
                reward_value = r if terminated else reward_value
                model.replay_buffer.add(obs[None], next_obs[None], np.array([[action]]), np.array([0.0]),
                                        np.array([terminated]), [info])
                obs = next_obs
            if reward_value is not None:
                model.replay_buffer.rewards[model.replay_buffer.pos - self.steps:model.replay_buffer.pos, 0] = reward_value
        policy_file = self.settings["policy_file"]
        if self.recorder.history and policy_file and Path(policy_file).is_file():
            model.policy.load_state_dict(torch.load(policy_file, weights_only=True))

    def run(self, n_candidates: int) -> None:
        if n_candidates <= 0:
            return
        s = self.settings
        done = len(self.recorder.history)
        warmup_steps = max(0, int(s["warmup_episodes"]) - done) * self.steps
        model = AMCDDPG(
            "MlpPolicy", self.env,
            actor_lr=float(s["actor_lr"]), critic_lr=float(s["critic_lr"]),
            buffer_size=(done + n_candidates + 1) * self.steps,
            learning_starts=warmup_steps, batch_size=int(s["batch_size"]), tau=float(s["tau"]),
            gamma=float(s["gamma"]), train_freq=(1, "step"), gradient_steps=1,
            action_noise=self.noise, policy_kwargs={"net_arch": list(s["hidden"])},
            seed=self.seed, device="cpu", verbose=0,
        )
        callback = EpisodeCallback(self, n_candidates)
        model.learn(total_timesteps=(n_candidates + 1) * self.steps, callback=callback)
