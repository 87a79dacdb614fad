"""The architecture holds: the pure core imports no I/O, and the public API is exported."""

from __future__ import annotations

import ast
import pathlib

import segdl

CORE = pathlib.Path(segdl.__file__).parent / "core"
FORBIDDEN = {"trio", "httpx", "h11", "socket", "ssl", "os", "threading", "asyncio", "time"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_is_pure() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        bad = imported_modules(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}: the core must stay free of I/O"


def test_all_public_names_are_exported() -> None:
    for name in segdl.__all__:
        assert hasattr(segdl, name), name
    assert issubclass(segdl.ChecksumMismatch, segdl.DownloadError)
