"""Does DDPG earn its place? Its learning curves, next to random search at equal candidates.

    python bench/ddpg_evidence.py                 # the synthetic problem of tests/searchers/test_synthetic.py
    python bench/ddpg_evidence.py --runs runs/bench-quality/prune-flops0.5   # + curves of stored ResNet-20 searches

On the synthetic problem (a known accuracy function of the keep ratios, so the runs take
seconds) the search runs 300 episodes, 3 seeds; per block of 50 episodes it records the mean
and best reward, the spread of the taken actions across an episode's steps, the critic's loss
(SB3's ``train/critic_loss``) and the deterministic policy's actions. From stored ResNet-20
searches (``bench/quality_bench.py``) it reads the same reward and action-spread curves from the
trials. Writes bench/results/ddpg_evidence.json and the ``ddpg-evidence`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import optuna
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "searchers"))
from common import commit, machine, save_json, write_section  # noqa: E402
from test_synthetic import make_problem, plain_cnn  # noqa: E402

from autocomp.data import DataBundle, TensorSplit  # noqa: E402
from autocomp.data.bundle import Preprocess  # noqa: E402
from autocomp.env import LayerCompressEnv  # noqa: E402
from autocomp.searchers import SEARCHERS  # noqa: E402
from autocomp.searchers.ddpg import DDPGSearcher  # noqa: E402
from autocomp.searchers.record import TrialRecorder  # noqa: E402

RESULTS = HERE / "results" / "ddpg_evidence.json"
BLOCK = 50


def synthetic_data() -> tuple[torch.nn.Module, DataBundle]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    data = DataBundle(name="synthetic", train=TensorSplit(x, y), val=TensorSplit(x[:32], y[:32]), test=TensorSplit(x[:32], y[:32]),
                      num_classes=10, class_names=tuple(str(i) for i in range(10)), preprocess=Preprocess((0.0,), (1.0,)))
    return plain_cnn().eval(), data


def blocks(values: list[float], fn) -> list[float]:
    return [round(float(fn(values[i:i + BLOCK])), 4) for i in range(0, len(values), BLOCK)]


def synthetic_run(seed: int, episodes: int) -> dict:
    model, data = synthetic_data()
    problem = make_problem(model, data)
    recorder = TrialRecorder(optuna.create_study(), problem, searcher="ddpg")
    searcher = DDPGSearcher(problem, recorder, settings={}, seed=seed)
    critic, policy = [], []
    original = DDPGSearcher.end_episode

    def spy(self, m):
        critic.append(m.logger.name_to_value.get("train/critic_loss", float("nan")))
        env = LayerCompressEnv(problem)
        obs, _ = env.reset()
        acts = []
        for _ in problem.steps:
            action, _ = m.predict(obs, deterministic=True)
            acts.append(float(action[0]))
            obs, *_ = env.step(action)
        policy.append(acts)
        original(self, m)

    DDPGSearcher.end_episode = spy
    try:
        searcher.run(episodes)
    finally:
        DDPGSearcher.end_episode = original
    rewards = [c.metrics.val_accuracy - 1.0 for c in recorder.history]
    spread = [float(np.std(c.actions)) for c in recorder.history]
    random_problem = make_problem(model, data)
    random_recorder = TrialRecorder(optuna.create_study(), random_problem, searcher="random")
    SEARCHERS.get("random")(random_problem, random_recorder, settings={}, seed=seed).run(episodes)
    return {
        "reward_mean": blocks(rewards, np.mean), "reward_best": blocks(rewards, np.max),
        "action_spread": blocks(spread, np.mean), "critic_loss": blocks(critic, np.nanmean),
        "policy_at_block_end": [[round(a, 2) for a in policy[min(i + BLOCK, len(policy)) - 1]] for i in range(0, len(policy), BLOCK)],
        "best": max(rewards) + 1.0, "random_best": random_recorder.best.metrics.val_accuracy,
    }


def stored_curves(runs: Path) -> dict:
    out = {}
    for run_dir in sorted(runs.glob("ddpg-s*")):
        study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'study.db'}")
        trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
        rewards = [t.user_attrs["reward"] for t in trials]
        spread = [float(np.std(t.user_attrs["actions"])) for t in trials]
        out[run_dir.name] = {"reward_mean": blocks(rewards, np.mean), "reward_best": blocks(rewards, np.max),
                             "action_spread": blocks(spread, np.mean)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, help="stored ResNet-20 searches to read DDPG's curves from")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.report:
        results = json.loads(RESULTS.read_text())
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        torch.set_num_threads(1)
        results = {"synthetic": {str(s): synthetic_run(s, args.episodes) for s in args.seeds},
                   "stored": stored_curves(args.runs) if args.runs else {},
                   "machine": machine(), "commit": commit(),
                   "command": " ".join(["python bench/ddpg_evidence.py", *sys.argv[1:]])}
        save_json(RESULTS, results)
    lines = ["## Does DDPG earn its place? Learning curves against random search", "",
             f"Command: `{results['command']}` on {results['machine']}, commit {results['commit']}. Blocks of "
             f"{BLOCK} episodes; the first 100 are DDPG's random warm-up. Reward = validation accuracy - 1. Action "
             "spread: standard deviation of an episode's taken actions.", "",
             "**Synthetic problem** (tests/searchers/test_synthetic.py: 8 channel groups, accuracy a known function "
             "of their keep ratios, `--budget-flops 0.4`):", "",
             "| seed | mean reward per block | best reward per block | action spread | critic loss | best | random's best |",
             "|---|---|---|---|---|---:|---:|"]
    for seed, r in results["synthetic"].items():
        lines.append(f"| {seed} | {r['reward_mean']} | {r['reward_best']} | {r['action_spread']} | {r['critic_loss']} | "
                     f"{r['best']:.4f} | {r['random_best']:.4f} |")
    if results["stored"]:
        lines += ["", "**ResNet-20 searches** (the `ddpg` rows of the search-quality table):", "",
                  "| run | mean reward per block | best reward per block | action spread |", "|---|---|---|---|"]
        for name, r in results["stored"].items():
            lines.append(f"| {name} | {r['reward_mean']} | {r['reward_best']} | {r['action_spread']} |")
    write_section("ddpg-evidence", "\n".join(lines))


if __name__ == "__main__":
    main()
