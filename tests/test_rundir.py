"""The run directory: one reader of config.yaml, atomic writers, summaries that merge, and errors
that name the command to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autocomp.config import SearchConfig
from autocomp.errors import ConfigError
from autocomp.plan import Plan
from autocomp.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "r")
    run.write_config(SearchConfig(budget_flops="0.5", name="r", runs_dir=str(tmp_path)))
    return run


def test_layout(tmp_path: Path) -> None:
    run = RunDir.of(SearchConfig(name="x", runs_dir=str(tmp_path)))
    assert run.path == tmp_path / "x" and run.name == "x"
    assert {p.relative_to(run.path).as_posix() for p in (
        run.config_file, run.summary_file, run.study_db, run.study_journal, run.policy_file, run.best_plan,
        run.best_model, run.finetuned_plan, run.finetuned_model, run.export_dir, run.report_file)} == {
        "config.yaml", "summary.json", "study.db", "study.journal", "agent_policy.pt", "best/plan.json",
        "best/model.pt", "finetuned/plan.json", "finetuned/model.pt", "export", "report.html"}
    assert Path(run) == run.path  # usable wherever a path is


def test_config_round_trip(run: RunDir) -> None:
    assert run.exists()
    assert run.read_config() == SearchConfig(budget_flops="0.5", name="r", runs_dir=str(run.path.parent))


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a run directory \(no config.yaml\): pass runs/<name>"):
        RunDir(tmp_path / "nope").read_config()
    with pytest.raises(ConfigError, match="is not a run directory"):
        RunDir(tmp_path / "nope").require_finished()


def test_an_unfinished_run_names_the_command_that_finishes_it(run: RunDir) -> None:
    fix = f"finish it with `autocomp search --name r --runs-dir {run.path.parent} --resume`"
    with pytest.raises(ConfigError, match=r"not a finished run \(missing .*summary.json\): " + fix):
        run.require_finished()
    run.write_summary({"best": {"trial": 0}})
    with pytest.raises(ConfigError, match=r"missing .*best/plan.json"):
        run.require_finished()
    run.save_best(Plan(), {"w": torch.zeros(1)})
    run.require_finished()
    with pytest.raises(ConfigError, match=f"missing .*finetuned/plan.json.*`autocomp finetune {run.path}`"):
        run.require_finished(finetuned=True)
    assert RunDir("runs/x").resume_command() == "autocomp search --name x --resume"


def test_summary_keeps_finetuning_and_exports(run: RunDir) -> None:
    run.write_summary({"candidates": 3, "best": {"trial": 1}})
    run.update_summary("finetuned", {"trial": 1, "test_accuracy": 0.9})
    run.record_export("onnx", {"file": "model.onnx", "size_bytes": 10}, run.export_dir)
    run.record_export("packed", {"file": "model.packed.pt", "size_bytes": 5}, run.path.parent / "elsewhere")
    merged = run.write_summary({"candidates": 6, "best": {"trial": 4}})  # a resumed search summarises again
    assert merged == json.loads(run.summary_file.read_text())
    assert merged["candidates"] == 6 and merged["finetuned"] == {"trial": 1, "test_accuracy": 0.9}
    assert merged["exports"]["onnx"] == {"file": "model.onnx", "size_bytes": 10, "dir": "export"}
    assert merged["exports"]["packed"]["dir"] == str((run.path.parent / "elsewhere").resolve())
    assert run.previous_wall_seconds() == 0.0


def test_writes_leave_no_temporary_files(run: RunDir) -> None:
    from matplotlib.figure import Figure

    run.write_summary({"wall_seconds": 2.5})
    run.save_best(Plan(), {"w": torch.zeros(1)})
    run.save_finetuned({"w": torch.ones(1)})
    run.write_report("<html></html>")
    figure = Figure()
    figure.subplots().plot([0, 1])
    assert run.save_figure(figure, "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert run.previous_wall_seconds() == 2.5
    assert run.finetuned_plan.read_text() == run.best_plan.read_text()
    assert sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*")) == [
        "best", "best/model.pt", "best/plan.json", "config.yaml", "finetuned", "finetuned/model.pt",
        "finetuned/plan.json", "plot.png", "report.html", "summary.json"]


@pytest.mark.parametrize(("new", "message"), [
    ({"budget_flops": "0.3"}, r"--resume: budget_flops is 0.3 here but 0.5 in runs/x/config.yaml: drop the flag"),
    ({"model": "resnet20", "seed": 2}, r"model is resnet20 here .*, seed is 2 here but 0 .*: drop the flags"),
    ({"weights": "w.pt"}, r"weights is w.pt here but None"),
    ({"agent_options": {"warmup_episodes": 3}}, r"agent_options is \{'warmup_episodes': 3\} here but \{\}"),
    ({"preprocess": "p.json"}, "preprocess is p.json here"),
])
def test_resume_refuses_changed_settings(new: dict, message: str) -> None:
    stored = SearchConfig(budget_flops="0.5", name="x")
    with pytest.raises(ConfigError, match=message):
        SearchConfig(name="x", **new).resumed(stored, source="runs/x/config.yaml")


def test_resume_takes_run_fields_and_unset_settings() -> None:
    stored = SearchConfig(budget_flops="0.5", agent="random", episodes=10, threads=2, name="x")
    resumed = SearchConfig(name="x", runs_dir="elsewhere", episodes=20, threads=4, budget_flops=0.5).resumed(
        stored, source="runs/x/config.yaml")  # 0.5 given in Python is "0.5" on the command line
    assert resumed == stored.replace(runs_dir="elsewhere", episodes=20, threads=4)
    assert SearchConfig(name="x").resumed(stored, source="-") == stored


class _Versioned(torch.nn.Module):
    """A module that checks its saved version on load, as torchvision's MNASNet does."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2 instead of {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_saved_weights_keep_the_module_versions(tmp_path: Path) -> None:
    """The best and fine-tuned weights are saved with ``_metadata``, so a module that checks its
    version on load (torchvision's MNASNet) loads them back."""
    run = RunDir(tmp_path / "run")
    model = _Versioned()
    run.save_best(Plan(), model.state_dict())
    run.save_finetuned(model.state_dict())
    for path in (run.best_model, run.finetuned_model):
        state = torch.load(path, weights_only=True)
        assert state._metadata[""]["version"] == 2
        _Versioned().load_state_dict(state)
    with pytest.raises(ValueError, match="instead of None"):  # what a plain dict of the tensors met
        _Versioned().load_state_dict(dict(model.state_dict()))
