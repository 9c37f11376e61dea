"""AMC's DDPG agent, built on stable-baselines3's ``DDPG``.

AMC-faithful details (He et al. 2018), set in ``agents/ddpg.yaml`` (the only home of the defaults):
- ``warmup_episodes`` of random actions before any update (SB3's ``learning_starts``);
- exploration by truncated-normal noise around the policy's action, kept within the action
  bounds, its sigma (``noise_sigma``, 0.5 in keep-ratio units) decaying geometrically over the
  episodes after warm-up to ``noise_final`` at the last one of the search;
- discount 1, and the episode's final reward copied to every transition of that episode
  (rewritten in the replay buffer when the episode ends);
- updates after each episode, as many as its steps, once every transition has its reward
  (a transition without one is never sampled: the buffer refuses to);
- the buffer holds what was done: when an episode ends, its actions are replaced by the taken
  ones (the plan after projection onto the budgets) and its observations by those they meet;
- a replay buffer of the last ``buffer_episodes`` episodes (AMC keeps about 100);
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
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv

from autocomp.env import LayerCompressEnv
from autocomp.errors import ConfigError
from autocomp.files import save_torch
from autocomp.searchers.base import Searcher


class EpisodeReplayBuffer(ReplayBuffer):
    """Transitions whose reward is the episode's, written when the episode ends.

    A transition is stored with reward NaN until its episode's reward is written (``rewrite``);
    sampling one raises, so no update ever learns from a reward that does not exist yet.
    With ``baseline``, AMC's reward normalisation: sampled rewards minus a moving average of
    batch means (with discount 1 and the episode's reward on every step, raw rewards pile up
    along the episode; centring them keeps the critic's targets near zero).
    """

    moving_alpha = 0.5

    def __init__(self, *args: Any, baseline: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline = baseline
        self.moving_average: float | None = None

    def add(self, obs: Any, next_obs: Any, action: Any, reward: Any, done: Any, infos: Any) -> None:
        pending = np.where(np.asarray(done, dtype=bool), np.asarray(reward, dtype=np.float32), np.nan)
        super().add(obs, next_obs, action, pending, done, infos)

    def rewrite(self, positions: list[int], env_index: int, reward: float) -> None:
        """Give the transitions at ``positions`` (one episode of env ``env_index``) its reward."""
        self.rewards[np.asarray(positions, dtype=np.int64), env_index] = reward

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        data = super()._get_samples(batch_inds, env)
        if torch.isnan(data.rewards).any():
            raise RuntimeError("sampled a transition whose episode has no reward yet: updates must wait for the episode")
        if not self.baseline:
            return data
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
    """Ends each episode in the replay buffer: every transition gets the episode's reward, and
    the taken actions (the plan after projection onto the budgets) with the observations they
    meet replace the actions asked for. Also decays noise and records candidates."""

    def __init__(self, searcher: DDPGSearcher, n_episodes: int) -> None:
        super().__init__()
        self.searcher = searcher
        self.n_episodes = n_episodes
        self.done_episodes = 0
        self._positions: list[int] = []
        self._ended: list[tuple[list[int], int, list[list[float]]]] = []
        self._started = datetime.now()
        self._replayer = LayerCompressEnv(searcher.problem, reward_kind=searcher.reward_kind)

    def _on_training_start(self) -> None:
        self.searcher.replay_history(self.model)

    def _on_step(self) -> bool:
        buffer = self.model.replay_buffer
        if not self._positions:
            self._started = datetime.now()
        self._positions.append(buffer.pos)  # this step's transition is stored at pos, after on_step
        dones = self.locals["dones"]
        if not dones.any():
            return True
        # every env runs the same number of steps, so all episodes end together; each env's
        # column of the buffer gets its own episode's reward
        for env_index in np.flatnonzero(dones):
            # the last transition is stored after this call, with its (final) reward
            buffer.rewrite(self._positions[:-1], int(env_index), float(self.locals["rewards"][env_index]))
            info = self.locals["infos"][env_index]
            self._ended.append((list(self._positions), int(env_index), info["taken_actions"]))
            if self.done_episodes < self.n_episodes:
                self.searcher.recorder.record(info["plan"], info["metrics"], actions=info["taken_actions"],
                                              started=self._started)
                self.searcher.end_episode(self.model)
                self.done_episodes += 1
        self._positions = []
        return self.done_episodes < self.n_episodes and not self.searcher.recorder.should_stop()

    def _on_rollout_end(self) -> None:
        # a rollout is one episode per env, and its last transition is stored by now: replace
        # what was asked by what was taken before the updates that follow
        for positions, env_index, taken in self._ended:
            self.searcher.store_taken(self.model.replay_buffer, positions, env_index, taken, self._replayer)
        self._ended = []


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
        self._episodes_seen = len(self.recorder.candidates)
        self.total_episodes = self._episodes_seen  # set by ``run``: the search's whole episode budget

    @property
    def sigma(self) -> float:
        """Exploration noise (keep-ratio units) for the next episode: ``noise_sigma`` until the
        end of warm-up, then decaying geometrically to ``noise_final`` at the last episode."""
        warmup = int(self.settings["warmup_episodes"])
        start, final = float(self.settings["noise_sigma"]), float(self.settings["noise_final"])
        span = max(1, self.total_episodes - 1 - warmup)
        progress = min(1.0, max(0, self._episodes_seen - warmup) / span)
        return start * (final / start) ** progress if start > 0 else 0.0

    def end_episode(self, model: AMCDDPG) -> None:
        self._episodes_seen += 1
        model.noise_sigma = self.sigma
        if self.settings["policy_file"]:
            save_torch(model.policy.state_dict(), self.settings["policy_file"])

    @staticmethod
    def store_taken(buffer: EpisodeReplayBuffer, positions: list[int], env_index: int, taken: list[list[float]],
                    env: LayerCompressEnv) -> None:
        """Make the episode stored at ``positions`` of env ``env_index`` the one that took ``taken``."""
        rows = np.asarray(positions, dtype=np.int64)
        observations = env.observations(taken)
        buffer.actions[rows, env_index] = np.asarray(taken, dtype=buffer.actions.dtype)
        buffer.observations[rows, env_index] = observations[:-1]
        buffer.next_observations[rows, env_index] = observations[1:]

    def replay_history(self, model: DDPG) -> None:
        """Put every earlier episode from storage back into the replay buffer (resume)."""
        history = self.recorder.candidates
        buffer = model.replay_buffer
        # the buffer stores one transition per env per step: replay earlier episodes n_envs at a
        # time (with several workers, up to n_envs - 1 of them stay in storage only)
        for first in range(0, len(history) - self.n_envs + 1, self.n_envs):
            group = history[first:first + self.n_envs]
            envs = [LayerCompressEnv(self.problem, reward_kind=self.reward_kind) for _ in group]
            obs = np.stack([env.reset()[0] for env in envs])
            positions = []
            rewards = np.zeros(len(group))
            for step in range(self.steps):
                actions = np.array([c.actions[step] for c in group], dtype=np.float32)
                results = [env.step(a) for env, a in zip(envs, actions)]
                next_obs = np.stack([r[0] for r in results])
                done = np.array([r[2] for r in results])
                rewards = np.where(done, [r[1] for r in results], rewards)
                positions.append(buffer.pos)
                buffer.add(obs, next_obs, actions, np.zeros(len(group)), done, [r[4] for r in results])
                obs = next_obs
            for env_index, reward in enumerate(rewards):
                buffer.rewrite(positions, env_index, float(reward))
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
        done = len(self.recorder.candidates)
        self.total_episodes = done + n_candidates
        warmup_steps = max(0, int(s["warmup_episodes"]) - done) * self.steps
        env = ParallelEpisodesVecEnv([lambda: LayerCompressEnv(self.problem, reward_kind=self.reward_kind)
                                      for _ in range(self.n_envs)])
        model = AMCDDPG(
            "MlpPolicy", env,
            actor_lr=float(s["actor_lr"]), critic_lr=float(s["critic_lr"]), noise_sigma=self.sigma,
            buffer_size=int(s["buffer_episodes"]) * self.steps * self.n_envs,
            learning_starts=warmup_steps, batch_size=int(s["batch_size"]), tau=float(s["tau"]),
            gamma=float(s["gamma"]), gradient_steps=-1,
            # every episode has the same steps and the envs run in lockstep: training every `steps`
            # vector steps is training after each episode (SB3's "episode" unit allows one env only)
            train_freq=(self.steps, "step"),
            policy_kwargs={"net_arch": list(s["hidden"])},
            replay_buffer_class=EpisodeReplayBuffer, replay_buffer_kwargs={"baseline": bool(s["reward_baseline"])},
            seed=self.seed, device="cpu", verbose=0,
        )
        # SB3's default logger makes a folder in the temp directory on every learn(); record in memory only
        model.set_logger(Logger(folder=None, output_formats=[]))
        callback = EpisodeCallback(self, n_candidates)
        model.learn(total_timesteps=(n_candidates + 2 * self.n_envs) * self.steps, callback=callback)
