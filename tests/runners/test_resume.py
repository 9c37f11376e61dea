"""An interrupted search loses nothing: --resume keeps every stored trial and finishes the rest."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest


def completed(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def snapshot(db: Path, name: str) -> dict[int, dict]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {t.number: dict(t.user_attrs, params=t.params) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


@pytest.mark.slow
@pytest.mark.parametrize(("agent", "episodes", "extra"), [
    ("optuna", 60, []),
    ("ddpg", 60, ["--agent-opt", "warmup_episodes=5"]),
])
def test_interrupt_then_resume(tmp_path: Path, agent: str, episodes: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "autocomp.cli", "search", "--budget-flops", "0.5", "--agent", agent,
           "--episodes", str(episodes), "--name", "run", "--runs-dir", str(tmp_path), "--no-progress", *extra]
    db = tmp_path / "run" / "study.db"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 240
    while completed(db) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"search ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    before = snapshot(db, "run")
    assert 12 <= len(before) < episodes

    resumed = subprocess.run([*cmd[:4], "--name", "run", "--runs-dir", str(tmp_path), "--resume", "--no-progress"],
                             check=False, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = snapshot(db, "run")
    assert len(after) == episodes
    for number, attrs in before.items():  # every earlier trial is kept, unchanged
        assert after[number] == attrs
    assert (tmp_path / "run" / "summary.json").is_file()


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    from autocomp.cli import main

    args = ["search", "--budget-flops", "0.5", "--agent", "uniform", "--name", "r", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    mtime = (tmp_path / "r" / "study.db").stat().st_mtime
    assert main(args) == 2
    assert (tmp_path / "r" / "study.db").stat().st_mtime == mtime


def test_an_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    from autocomp.files import atomic_path, write_text

    target = tmp_path / "summary.json"
    write_text(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_resume_survives_an_unreadable_agent_policy(tmp_path: Path) -> None:
    from autocomp.cli import main

    args = ["search", "--budget-flops", "0.5", "--agent", "ddpg", "--agent-opt", "warmup_episodes=2",
            "--name", "r", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*args, "--episodes", "4"]) == 0
    policy = tmp_path / "r" / "agent_policy.pt"
    policy.write_bytes(policy.read_bytes()[:100])  # e.g. a copy cut short
    with pytest.warns(UserWarning, match="could not reload the agent's policy"):
        assert main(["search", "--name", "r", "--runs-dir", str(tmp_path), "--resume", "--episodes", "6", "--no-progress"]) == 0
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r' / 'study.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6


def _actions(db: Path, name: str) -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    return [tuple(sorted(t.params.items())) for t in trials]


def test_resumed_optuna_search_proposes_new_candidates(tmp_path: Path) -> None:
    """Six trials, then six more on resume, all within TPE's random start-up trials: reseeded
    with the same seed, the sampler would propose the first six again."""
    import autocomp

    settings = {"name": "r", "runs_dir": str(tmp_path), "progress": False}
    autocomp.search(budget_flops="0.5", agent="optuna", episodes=6, **settings)
    autocomp.search(episodes=12, resume=True, **settings)
    actions = _actions(tmp_path / "r" / "study.db", "r")
    assert len(actions) == 12
    assert not set(actions[6:]) & set(actions[:6])
    assert len(set(actions)) == 12


def test_ddpg_resumed_in_warmup_proposes_new_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after 3 of 8 random warm-up episodes, the resumed agent's warm-up goes on with
    other random actions, not the first ones again."""
    import signal as signals

    import autocomp
    from autocomp.runners import local
    from autocomp.runners.interrupt import GracefulStop

    class CtrlCAfterThree(GracefulStop):  # the first Ctrl-C, pressed during the third episode
        def __call__(self) -> bool:
            self.asked = getattr(self, "asked", 0) + 1
            if self.asked == 3:
                self._handle(signals.SIGINT, None)
            return self.requested

    settings = {"name": "r", "runs_dir": str(tmp_path), "progress": False}
    monkeypatch.setattr(local, "GracefulStop", CtrlCAfterThree)
    with pytest.raises(KeyboardInterrupt):
        autocomp.search(budget_flops="0.5", agent="ddpg", episodes=10, agent_options={"warmup_episodes": 8}, **settings)
    monkeypatch.undo()
    db = tmp_path / "r" / "study.db"
    assert len(_actions(db, "r")) == 3
    autocomp.search(resume=True, **settings)
    actions = _actions(db, "r")
    assert len(actions) == 10
    assert not set(actions[3:]) & set(actions[:3])
