"""autocomp keeps pyproject's promise of Python >= 3.10: no syntax and no standard-library names
that only 3.11 and later have."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autocomp"
MODULES = sorted(PACKAGE.rglob("*.py"))

NEW_IN_311 = {  # module -> names it gained in 3.11 or later
    "typing": {"Self", "LiteralString", "Never", "assert_type", "reveal_type", "NotRequired", "Required", "Unpack",
               "TypeVarTuple", "assert_never", "dataclass_transform", "override", "TypeAliasType"},
    "enum": {"StrEnum", "verify", "ReprEnum", "EnumCheck"},
    "datetime": {"UTC"},
    "asyncio": {"TaskGroup", "timeout", "Runner"},
    "hashlib": {"file_digest"},
    "contextlib": {"chdir"},
    "itertools": {"batched"},
}
NEW_MODULES = {"tomllib"}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def python310() -> str | None:
    for candidate in ("/root/.pyenv/versions/3.10.13/bin/python3.10", shutil.which("python3.10")):
        if candidate and Path(candidate).is_file():
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                   check=False, capture_output=True, text=True)
            if probe.stdout.strip() == "True":
                return candidate
    return None


def uses_of_newer_names(tree: ast.AST) -> list[str]:
    aliases: dict[str, str] = {}  # local name -> module, for `import typing as t`
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in NEW_MODULES:
                    found.append(f"import {alias.name}")
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in NEW_MODULES:
                found.append(f"from {node.module} import ...")
            for alias in node.names:
                if alias.name in NEW_IN_311.get(node.module, ()):
                    found.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id, node.value.id)
            if node.attr in NEW_IN_311.get(module, ()):
                found.append(f"{module}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            found.append(node.id)
        elif type(node).__name__ == "TryStar":
            found.append("except*")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_names_newer_than_python_310(path: Path) -> None:
    found = uses_of_newer_names(ast.parse(path.read_text(), filename=str(path)))
    assert not found, f"{path} uses {found}, which Python 3.10 lacks: use a 3.10 form, or typing_extensions"


def test_the_checker_finds_newer_names() -> None:
    code = ("import tomllib\nimport typing as t\nfrom typing import Self\nx: t.Never\ny = ExceptionGroup\n"
            "import enum\nenum.StrEnum\n")
    assert sorted(uses_of_newer_names(ast.parse(code))) == [
        "ExceptionGroup", "enum.StrEnum", "from typing import Self", "import tomllib", "typing.Never"]


def test_every_module_compiles_with_python_310() -> None:
    interpreter = python310()
    if interpreter is None:
        pytest.skip("no Python 3.10 interpreter here (looked for python3.10 on PATH and in pyenv)")
    script = ("import sys\nbad = []\nfor path in sys.argv[1:]:\n    try:\n"
              "        compile(open(path).read(), path, 'exec')\n"
              "    except SyntaxError as exc:\n        bad.append(f'{path}:{exc.lineno}: {exc.msg}')\n"
              "print('\\n'.join(bad))\n")
    proc = subprocess.run([interpreter, "-c", script, *map(str, MODULES)], check=True, capture_output=True, text=True)
    assert not proc.stdout.strip(), f"Python 3.10 cannot compile:\n{proc.stdout}"
