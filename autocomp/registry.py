"""One small generic registry used for models, datasets, searchers and spaces.

Example:
    >>> from autocomp.registry import Registry
    >>> animals = Registry("animal")
    >>> @animals.register("cat")
    ... def make_cat():
    ...     return "meow"
    >>> animals.get("cat")()
    'meow'
    >>> animals.list("c*")
    ['cat']
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from autocomp.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object map with lazy ``"module:attr"`` entries and close-match errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, help=help or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0])
            return obj

        return decorator

    def add(self, name: str, obj: T | str, *, help: str = "") -> None:
        """Add ``obj`` (or a lazy ``"module:attr"`` string, imported on first use)."""
        self._entries[name] = obj
        self._help[name] = help

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, attr = entry.split(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        return (
            f"unknown {self.kind} `{name}`.{hint} "
            f"Run `autocomp list {self.kind}s` to see them all."
        )

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries
