"""Ray: a real cluster on loopback, parallel search, a 2x2 sweep, a killed worker, bad addresses."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(["ray", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, capture_output=True, env=env)
    yield f"127.0.0.1:{port}"
    subprocess.run(["ray", "stop", "--force"], check=False, capture_output=True)


def autocomp(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autocomp.cli", *args], check=False, capture_output=True, text=True, timeout=timeout)


def completed(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def trials(db: Path, name: str) -> dict[int, dict]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {t.number: t.user_attrs for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def test_parallel_search_on_cluster(cluster: str, tmp_path: Path) -> None:
    proc = autocomp("search", "--budget-flops", "0.5", "--agent", "optuna", "--episodes", "10", "--workers", "2",
                    "--threads", "1", "--address", cluster, "--name", "par", "--runs-dir", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "par" / "summary.json").read_text())
    assert summary["candidates"] == 10
    assert summary["best"]["flops"] <= summary["budgets"]["flops"]["limit"]
    assert len(trials(tmp_path / "par" / "study.db", "par")) == 10


def test_sweep_2x2_on_cluster(cluster: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: {episodes: 6}\ngrid:\n  budget_flops: [0.4, 0.6]\n  agent: [optuna, random]\n")
    proc = autocomp("sweep", str(sweep), "--address", cluster, "--runs-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",done," in r for r in rows[1:])
    for trial in ("optuna-flops0.4", "optuna-flops0.6", "random-flops0.4", "random-flops0.6"):
        summary = json.loads((tmp_path / "s" / trial / "summary.json").read_text())
        assert summary["candidates"] == 6
        assert summary["best"]["flops"] <= summary["budgets"]["flops"]["limit"]
    png = (tmp_path / "s" / "accuracy_vs_budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_killed_worker_loses_no_trial(cluster: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "autocomp.cli", "search", "--budget-flops", "0.5", "--agent", "random", "--episodes", "120",
           "--workers", "2", "--threads", "1", "--address", cluster, "--name", "kill", "--runs-dir", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "kill" / "study.db"
    deadline = time.time() + 300
    while completed(db) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    before = trials(db, "kill")
    pids = subprocess.run(["pgrep", "-f", "EvalWorker"], check=False, capture_output=True, text=True).stdout.split()
    assert pids, "no EvalWorker process found"
    os.kill(int(pids[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    after = trials(db, "kill")
    assert len(after) == 120
    for number, attrs in before.items():
        assert after[number] == attrs


def test_unreachable_address_fails_fast(tmp_path: Path) -> None:
    start = time.time()
    proc = autocomp("search", "--budget-flops", "0.5", "--agent", "uniform", "--workers", "2", "--address", f"127.0.0.1:{free_port()}",
                    "--runs-dir", str(tmp_path), "--no-progress", timeout=60)
    assert proc.returncode == 2
    assert "no Ray cluster answers at --address" in proc.stderr and "ray start --head" in proc.stderr
    assert time.time() - start < 30


def test_workers_that_do_not_fit_fail_before_the_run_directory(cluster: str, tmp_path: Path) -> None:
    proc = autocomp("search", "--budget-flops", "0.5", "--agent", "uniform", "--workers", "2", "--threads", "2",
                    "--address", cluster, "--name", "big", "--runs-dir", str(tmp_path), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autocomp: error: --workers 2 x --threads 2 need 4 CPUs but the Ray cluster has 2")
    assert "Traceback" not in proc.stderr and not (tmp_path / "big").exists()
