"""Shipped YAML presets (``search_spaces/*.yaml``, ``agents/*.yaml``) and user YAML files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autocomp.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PRESET_PACKAGES = {"space": "autocomp.search_spaces", "agent": "autocomp.agent_presets"}
_SOURCE_DIRS = {"space": "search_spaces", "agent": "agents"}


def _preset_dir(kind: str) -> Traversable:
    """Where the shipped presets of ``kind`` are: a folder of the installed package (a directory
    in an editable install, a namespace package's ``MultiplexedPath`` in a wheel: only the
    ``Traversable`` interface works for both), or of the source tree."""
    try:
        return resources.files(PRESET_PACKAGES[kind])
    except ModuleNotFoundError:  # running from a source tree without installing
        return Path(__file__).resolve().parent.parent / _SOURCE_DIRS[kind]


def list_presets(kind: str) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _preset_dir(kind).iterdir() if p.name.endswith(".yaml"))


def load_preset(kind: str, name_or_path: str) -> dict[str, Any]:
    """Read a preset by name (``prune``) or a YAML file path (``my_space.yaml``)."""
    path: Traversable = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise ConfigError(f"{kind} file {path} does not exist: pass a preset name ({', '.join(list_presets(kind))}) or an existing .yaml file.")
    else:
        path = _preset_dir(kind).joinpath(f"{name_or_path}.yaml")
        if not path.is_file():
            import difflib

            names = list_presets(kind)
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise UnknownNameError(f"unknown {kind} `{name_or_path}`.{hint} Run `autocomp list {kind}s` to see them all.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc.__class__.__name__}): fix the file.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level.")
    data.setdefault("name", Path(path.name).stem)
    return data
