"""The layout of a run directory, and the one place that reads and writes it::

    runs/<name>/
      config.yaml                  the search settings (SearchConfig)
      study.db | study.journal     every candidate, an Optuna study (see runners/storage.py)
      agent_policy.pt              the DDPG agent's policy, reloaded on --resume
      best/plan.json, model.pt     the best plan and its compressed weights
      finetuned/plan.json, model.pt   written by ``autocomp finetune``
      export/                      written by ``autocomp export``: the model and export-<format>.json
      subsets.json                 the validation and calibration images (indices), so a resume scores the same
      summary.json                 the results; its ``finetuned`` and ``exports`` sections
                                   survive a resumed search
      report.html, *.png           written by ``autocomp report``

Every file is written atomically (:mod:`autocomp.files`): an interruption leaves the old file
or the new one, never a torn one.

Example:
    >>> run = RunDir("runs/r20-ddpg")
    >>> run.best_plan.as_posix()
    'runs/r20-ddpg/best/plan.json'
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autocomp.config import SearchConfig
from autocomp.data.bundle import Subsets
from autocomp.errors import ConfigError
from autocomp.files import atomic_path, save_torch, write_text

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from autocomp.plan import Plan

KEPT_SECTIONS = ("finetuned", "exports")
"""Summary sections written after the search; writing the search's summary again keeps them."""


def cpu_state(state_dict: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """``state_dict``'s tensors detached on the CPU, with its module versions (``_metadata``): some
    modules check them on load (torchvision's MNASNet refuses a state without them)."""
    state = OrderedDict((k, v.detach().cpu()) for k, v in state_dict.items())
    state._metadata = OrderedDict(getattr(state_dict, "_metadata", {}))  # type: ignore[attr-defined]
    return state


class RunDir:
    """One run directory: its file paths, and readers and atomic writers for its files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, config: SearchConfig) -> RunDir:
        """``runs_dir/name`` of a config whose name is set."""
        if not config.name:
            raise ConfigError("a run directory needs a run name: pass --name NAME (name= in the Python API).")
        return cls(Path(config.runs_dir) / config.name)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    @property
    def study_journal(self) -> Path:
        return self.path / "study.journal"

    @property
    def subsets_file(self) -> Path:
        return self.path / "subsets.json"

    @property
    def policy_file(self) -> Path:
        return self.path / "agent_policy.pt"

    @property
    def best_plan(self) -> Path:
        return self.path / "best" / "plan.json"

    @property
    def best_model(self) -> Path:
        return self.path / "best" / "model.pt"

    @property
    def finetuned_plan(self) -> Path:
        return self.path / "finetuned" / "plan.json"

    @property
    def finetuned_model(self) -> Path:
        return self.path / "finetuned" / "model.pt"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    def exists(self) -> bool:
        """Whether a search has started here (its config.yaml is written before any candidate)."""
        return self.config_file.is_file()

    def resume_command(self) -> str:
        runs_dir = "" if self.path.parent == Path("runs") else f" --runs-dir {self.path.parent}"
        return f"autocomp search --name {self.name}{runs_dir} --resume"

    # config.yaml

    def read_config(self) -> SearchConfig:
        if not self.exists():
            raise ConfigError(f"{self.path} is not a run directory (no config.yaml): pass runs/<name>, "
                              "a folder `autocomp search` wrote.")
        try:
            data = yaml.safe_load(self.config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.config_file} is not valid YAML ({exc.__class__.__name__}): restore it, "
                              "or start a new run with another --name.") from exc
        return SearchConfig.from_dict(data)

    def write_config(self, config: SearchConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.config_file, yaml.safe_dump(config.to_dict(), sort_keys=False))

    # subsets.json: the validation and calibration images (indices into the training source)

    def read_subsets(self) -> Subsets | None:
        """The images this run scores on, or None for a run started before they were stored."""
        if not self.subsets_file.is_file():
            return None
        return Subsets.from_dict(json.loads(self.subsets_file.read_text()))

    def write_subsets(self, subsets: Subsets) -> None:
        write_text(self.subsets_file, json.dumps(subsets.to_dict()) + "\n")

    # what a finished run holds

    def require_finished(self, *, finetuned: bool = False) -> None:
        """Fail with the command that finishes the run unless its results (``finetuned``: and
        its fine-tuned weights) are all there."""
        self.read_config()
        for path in (self.summary_file, self.best_plan, self.best_model):
            if not path.is_file():
                raise ConfigError(f"{self.path} is not a finished run (missing {path}): "
                                  f"finish it with `{self.resume_command()}`.")
        if finetuned:
            for path in (self.finetuned_plan, self.finetuned_model):
                if not path.is_file():
                    raise ConfigError(f"{self.path} has no fine-tuned model (missing {path}): "
                                      f"write it with `autocomp finetune {self.path}`.")

    def save_best(self, plan: Plan, state_dict: dict[str, torch.Tensor]) -> None:
        """The best plan and its model's ``state_dict`` (saved on the CPU, module versions kept)."""
        self.best_plan.parent.mkdir(parents=True, exist_ok=True)
        plan.save(self.best_plan)
        save_torch(cpu_state(state_dict), self.best_model)

    def save_finetuned(self, state_dict: dict[str, torch.Tensor]) -> None:
        """The fine-tuned weights, beside a copy of the plan they belong to (a resumed search may
        later find another best plan)."""
        self.finetuned_model.parent.mkdir(parents=True, exist_ok=True)
        save_torch(cpu_state(state_dict), self.finetuned_model)
        write_text(self.finetuned_plan, self.best_plan.read_text())

    # summary.json

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_file.is_file():
            self.read_config()
            raise ConfigError(f"{self.path} is not a finished run (missing {self.summary_file}): "
                              f"finish it with `{self.resume_command()}`.")
        summary: dict[str, Any] = json.loads(self.summary_file.read_text())
        return summary

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write the search's summary, keeping the sections written after an earlier search
        (:data:`KEPT_SECTIONS`) that ``summary`` does not set itself; return what was written."""
        old = self.read_summary() if self.summary_file.is_file() else {}
        merged = {**summary, **{k: old[k] for k in KEPT_SECTIONS if k in old and k not in summary}}
        self._write_summary(merged)
        return merged

    def update_summary(self, section: str, value: Any) -> dict[str, Any]:
        """Set one section of summary.json, keeping the rest."""
        summary = self.read_summary()
        summary[section] = value
        self._write_summary(summary)
        return summary

    def record_export(self, fmt: str, info: dict[str, Any], out_dir: Path) -> None:
        """Add an export to the summary's ``exports`` section, one entry per format."""
        try:
            where = out_dir.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            where = str(out_dir.resolve())
        exports = dict(self.read_summary().get("exports") or {})
        exports[fmt] = {**info, "dir": where}
        self.update_summary("exports", exports)

    def previous_wall_seconds(self) -> float:
        """Seconds the earlier invocations of this search took (0 for a new run)."""
        if not self.summary_file.is_file():
            return 0.0
        return float(self.read_summary().get("wall_seconds", 0.0))

    def _write_summary(self, summary: dict[str, Any]) -> None:
        write_text(self.summary_file, json.dumps(summary, indent=1) + "\n")

    # report

    def save_figure(self, figure: Figure, filename: str) -> Path:
        path = self.path / filename
        with atomic_path(path) as tmp:
            figure.savefig(tmp)
        return path

    def write_report(self, page: str) -> Path:
        write_text(self.report_file, page)
        return self.report_file
