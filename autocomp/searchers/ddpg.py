"""AMC's DDPG agent, built on stable-baselines3's ``DDPG``.

AMC-faithful details (He et al. 2018), set in ``agents/ddpg.yaml`` (the only home of the defaults):
- ``warmup_episodes`` of random actions before any update (SB3's ``learning_starts``);
- exploration by truncated-normal noise around the policy's action, kept within the action
  bounds, its sigma (0.5 in keep-ratio units) decaying x0.95 per episode after warm-up;
- discount 1, and the episode's final reward copied to every transition of that episode
  (rewritten in the replay buffer when the episode ends);
- separate actor and critic learning rates, 300x300 hidden units, tau 0.01, batch 64;
- sampled rewards centred on a moving average of batch means (AMC's ``moving_average``).

On ``--resume`` the replay buffer is rebuilt from the trials in storage and the last saved
policy weights are reloaded, so no earlier episode is lost to the agent either.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv

from autocomp.env import LayerCompressEnv
from autocomp.errors import ConfigError
from autocomp.files import save_torch
from autocomp.searchers.base import Searcher


class BaselineReplayBuffer(ReplayBuffer):
    """AMC's reward normalisation: sampled rewards minus a moving average of batch means.

    With discount 1 and the episode's reward on every step, raw rewards (about -0.1 to -0.9)
    pile up along the episode; centring them keeps the critic's targets near zero.
    """

    moving_alpha = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moving_average: float | None = None

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        data = super()._get_samples(batch_inds, env)
        mean = float(data.rewards.mean())
        if self.moving_average is None:
            self.moving_average = mean
        else:
            self.moving_average += self.moving_alpha * (mean - self.moving_average)
        return data._replace(rewards=data.rewards - self.moving_average)


class AMCDDPG(DDPG):
    """SB3's DDPG with AMC's exploration and separate actor (1e-4) / critic (1e-3) learning rates.

    Exploration (AMC): the policy's action plus truncated-normal noise kept inside the action
    bounds (resampled, not clipped, so no probability piles up at the bounds). ``noise_sigma``
    is in keep-ratio units, as in AMC, where the action range [0, 1] is half of SB3's [-1, 1].
    """

    def __init__(self, *args: Any, actor_lr: float, critic_lr: float, noise_sigma: float, **kwargs: Any) -> None:
        self.actor_lr = actor_lr
        self.critic_lr = critic_lr
        self.noise_sigma = noise_sigma
        super().__init__(*args, learning_rate=critic_lr, **kwargs)
        self._noise_rng = np.random.default_rng(self.seed)

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
        if self.num_timesteps < learning_starts or self.noise_sigma <= 0:
            return action, buffer_action  # warm-up: uniform random actions
        scale = 2.0 * self.noise_sigma  # keep-ratio units -> [-1, 1] action units
        low, high = (-1.0 - buffer_action) / scale, (1.0 - buffer_action) / scale
        noisy = truncnorm.rvs(low, high, loc=buffer_action, scale=scale, size=buffer_action.shape,
                              random_state=self._noise_rng)
        noisy = np.clip(noisy, -1.0, 1.0).astype(np.float32)
        return noisy, noisy

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


class ParallelEpisodesVecEnv(DummyVecEnv):
    """Several episodes in lockstep; their final plans are evaluated together, in parallel when
    the problem has a backend (Ray workers), before the envs step."""

    def step_wait(self) -> Any:
        finals = [env.final_plan(action) for env, action in zip(self.envs, self.actions)]  # type: ignore[attr-defined]
        plans = [p for p in finals if p is not None]
        if plans:
            self.envs[0].problem.evaluate_many(plans)  # type: ignore[attr-defined]
        return super().step_wait()


class EpisodeCallback(BaseCallback):
    """Copies each episode's reward to all its transitions, decays noise, records candidates."""

    def __init__(self, searcher: DDPGSearcher, n_episodes: int) -> None:
        super().__init__()
        self.searcher = searcher
        self.n_episodes = n_episodes
        self.done_episodes = 0
        self._episode_start: int | None = None
        self._actions: list[np.ndarray] = []
        self._started = datetime.now()

    def _on_training_start(self) -> None:
        self.searcher.replay_history(self.model)

    def _on_step(self) -> bool:
        buffer = self.model.replay_buffer
        if self._episode_start is None:
            self._episode_start = buffer.pos  # this step's transition is stored at pos, after on_step
            self._started = datetime.now()
        self._actions.append(np.asarray(self.locals["actions"]).reshape(len(self.locals["dones"]), -1))
        dones = self.locals["dones"]
        if not dones.any():
            return True
        # every env runs the same number of steps, so all episodes end together; each env's
        # column of the buffer gets its own episode's reward
        for env_index in np.flatnonzero(dones):
            buffer.rewards[self._episode_start:buffer.pos, env_index] = float(self.locals["rewards"][env_index])
            info = self.locals["infos"][env_index]
            if self.done_episodes < self.n_episodes:
                actions = [a[env_index].tolist() for a in self._actions]
                self.searcher.recorder.record(info["plan"], info["metrics"], actions=actions, started=self._started)
                self.searcher.end_episode(self.model)
                self.done_episodes += 1
        self._episode_start, self._actions = None, []
        return self.done_episodes < self.n_episodes and not self.searcher.recorder.should_stop()


class DDPGSearcher(Searcher):
    preset: ClassVar[str | None] = "ddpg"
    runtime: ClassVar[dict[str, Any]] = {"policy_file": None}

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
        self.steps = len(self.problem.steps)
        self.n_envs = max(1, self.problem.parallelism)
        self._episodes_seen = len(self.recorder.history)

    @property
    def sigma(self) -> float:
        """Exploration noise (keep-ratio units) for the next episode: decays after warm-up."""
        after_warmup = max(0, self._episodes_seen - int(self.settings["warmup_episodes"]))
        return float(self.settings["noise_sigma"]) * float(self.settings["noise_decay"]) ** after_warmup

    def end_episode(self, model: AMCDDPG) -> None:
        self._episodes_seen += 1
        model.noise_sigma = self.sigma
        if self.settings["policy_file"]:
            save_torch(model.policy.state_dict(), self.settings["policy_file"])

    def replay_history(self, model: DDPG) -> None:
        """Put every earlier episode from storage back into the replay buffer (resume)."""
        history = self.recorder.history
        buffer = model.replay_buffer
        # the buffer stores one transition per env per step: replay earlier episodes n_envs at a
        # time (with several workers, up to n_envs - 1 of them stay in storage only)
        for first in range(0, len(history) - self.n_envs + 1, self.n_envs):
            group = history[first:first + self.n_envs]
            envs = [LayerCompressEnv(self.problem, reward_kind=self.reward_kind) for _ in group]
            obs = np.stack([env.reset()[0] for env in envs])
            start = buffer.pos
            rewards = np.zeros(len(group))
            for step in range(self.steps):
                actions = np.array([c.actions[step] for c in group], dtype=np.float32)
                results = [env.step(a) for env, a in zip(envs, actions)]
                next_obs = np.stack([r[0] for r in results])
                done = np.array([r[2] for r in results])
                rewards = np.where(done, [r[1] for r in results], rewards)
                buffer.add(obs, next_obs, actions, np.zeros(len(group)), done, [r[4] for r in results])
                obs = next_obs
            buffer.rewards[start:buffer.pos] = rewards[None, :]
        policy_file = self.settings["policy_file"]
        if self.recorder.history and policy_file and Path(policy_file).is_file():
            try:
                model.policy.load_state_dict(torch.load(policy_file, weights_only=True))
            except (RuntimeError, OSError) as exc:  # unreadable: the rebuilt replay buffer still holds every episode
                warnings.warn(f"could not reload the agent's policy from {policy_file} ({str(exc).splitlines()[0]}); "
                              "continuing from a fresh policy trained on the stored episodes.", stacklevel=2)

    def run(self, n_candidates: int) -> None:
        if n_candidates <= 0:
            return
        s = self.settings
        done = len(self.recorder.history)
        warmup_steps = max(0, int(s["warmup_episodes"]) - done) * self.steps
        env = ParallelEpisodesVecEnv([lambda: LayerCompressEnv(self.problem, reward_kind=self.reward_kind)
                                      for _ in range(self.n_envs)])
        model = AMCDDPG(
            "MlpPolicy", env,
            actor_lr=float(s["actor_lr"]), critic_lr=float(s["critic_lr"]), noise_sigma=self.sigma,
            buffer_size=(done + n_candidates + 2 * self.n_envs) * self.steps,
            learning_starts=warmup_steps, batch_size=int(s["batch_size"]), tau=float(s["tau"]),
            gamma=float(s["gamma"]), train_freq=(1, "step"), gradient_steps=-1,
            policy_kwargs={"net_arch": list(s["hidden"])},
            replay_buffer_class=BaselineReplayBuffer if s["reward_baseline"] else ReplayBuffer,
            seed=self.seed, device="cpu", verbose=0,
        )
        callback = EpisodeCallback(self, n_candidates)
        model.learn(total_timesteps=(n_candidates + 2 * self.n_envs) * self.steps, callback=callback)
