"""What a run records can be trusted: a resumed run keeps its settings, its fine-tuning and its
exports, and tells its study what it searches."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

import autocomp
from autocomp.cli import main


@pytest.fixture
def uniform_run(tmp_path: Path) -> Path:
    assert main(["search", "--budget-flops", "0.5", "--agent", "uniform", "--name", "r", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 0
    return tmp_path / "r"


@pytest.mark.parametrize(("flags", "message"), [
    (["--budget-flops", "0.3"], "--resume: budget_flops is 0.3 here but 0.5 in "),
    (["--agent", "random"], "agent is random here but uniform in "),
    (["--space", "joint", "--seed", "3"], "space is joint here but prune in "),
    (["--agent-opt", "sampler=random"], "agent_options is {'sampler': 'random'} here but {} in "),
])
def test_resume_with_a_changed_setting_fails_in_one_line(capsys, uniform_run: Path, flags: list[str],
                                                         message: str) -> None:
    capsys.readouterr()
    mtime = uniform_run.joinpath("config.yaml").stat().st_mtime_ns
    code = main(["search", "--name", "r", "--runs-dir", str(uniform_run.parent), "--resume", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and str(uniform_run / "config.yaml") in err
    assert "drop the flag" in err and "another --name" in err
    assert len(err.strip().splitlines()) == 1
    assert uniform_run.joinpath("config.yaml").stat().st_mtime_ns == mtime


def test_resume_with_the_same_settings_continues(uniform_run: Path) -> None:
    assert main(["search", "--name", "r", "--runs-dir", str(uniform_run.parent), "--resume", "--no-progress",
                 "--budget-flops", "0.5", "--agent", "uniform", "--threads", "1"]) == 0
    assert autocomp.RunDir(uniform_run).read_config().threads == 1  # where it runs may change


def test_finetuning_and_exports_survive_a_resume(tmp_path: Path) -> None:
    settings = {"name": "r", "runs_dir": str(tmp_path), "progress": False}
    autocomp.search(budget_flops="0.5", agent="random", episodes=3, **settings)
    tuned = autocomp.finetune(tmp_path / "r", epochs=1, progress=False)
    exported = autocomp.export(tmp_path / "r", fmt="state_dict", finetuned=True)
    summary = autocomp.search(episodes=5, resume=True, **settings)
    assert summary["candidates"] == 5
    assert summary["finetuned"] == tuned and summary["finetuned"]["trial"] is not None
    assert summary["exports"]["state_dict"]["size_bytes"] == exported["size_bytes"]
    assert summary["exports"]["state_dict"]["finetuned"] and summary["exports"]["state_dict"]["dir"] == "export"
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    autocomp.load_compressed(tmp_path / "r", finetuned=True)  # its own plan, whichever plan is best now


def test_study_attributes_describe_the_search(uniform_run: Path) -> None:
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{uniform_run / 'study.db'}")
    attrs = study.user_attrs
    summary = json.loads((uniform_run / "summary.json").read_text())
    assert {k: attrs[k] for k in ("model", "data", "agent", "searcher", "space")} == {
        "model": "digits_cnn", "data": "digits", "agent": "uniform", "searcher": "uniform", "space": "prune"}
    assert attrs["budgets"] == summary["budgets"]
    base = summary["baseline"]
    assert attrs["baseline"] == {"macs": base["flops"], "params": base["params"], "size_bytes": base["size_bytes"],
                                 "val_accuracy": base["val_accuracy"]}


def test_sweep_summary_reads_each_run(tmp_path: Path) -> None:
    from autocomp.runners.sweep import grid_points, trial_name, write_summary

    points = grid_points({"budget_flops": [0.4, 0.6], "agent": ["random"]})
    done = autocomp.RunDir(tmp_path / trial_name(points[0]))
    done.write_config(autocomp.SearchConfig(budget_flops="0.4", agent="random", name=done.name, runs_dir=str(tmp_path)))
    done.write_summary({"candidates": 6, "baseline": {"flops": 100, "test_accuracy": 0.9},
                        "best": {"flops": 40, "val_accuracy": 0.8, "test_accuracy": 0.7}})
    rows = write_summary(tmp_path, points)
    assert [r["status"] for r in rows] == ["done", "missing"] and rows[0]["flops_kept"] == 0.4
    csv_rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and ",done," in csv_rows[1] and ",missing" in csv_rows[2]
    assert "| random | 0.4 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "accuracy_vs_budget.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_sweep_over_the_auto_space_names_the_space_searched(tmp_path: Path) -> None:
    from autocomp.runners.sweep import grid_points, trial_name, write_summary

    points = grid_points({"space": ["auto", "prune"]})
    for point, searched in zip(points, ["transformer", "prune"]):
        run = autocomp.RunDir(tmp_path / trial_name(point))
        run.write_config(autocomp.SearchConfig(space=point["space"], name=run.name, runs_dir=str(tmp_path)))
        run.write_summary({"candidates": 6, "space": searched, "baseline": {"flops": 100, "test_accuracy": 0.9},
                           "best": {"flops": 50, "val_accuracy": 0.8, "test_accuracy": 0.7}})
    rows = write_summary(tmp_path, points)
    assert [r["space"] for r in rows] == ["auto (transformer)", "prune"]
    assert [r["trial"] for r in rows] == ["auto", "prune"]  # the run directories keep the grid's names
    assert "| auto (transformer) |" in (tmp_path / "summary.md").read_text()
