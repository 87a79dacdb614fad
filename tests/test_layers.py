"""The architecture holds: each layer imports only what lies below it, the core does no I/O.

Every import of every module is read (absolute and relative, at any depth, inside functions
too) and held to its layer's allow-list.  A test of the test plants forbidden imports in a copy
of the package and checks that each one is caught.
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import sys
from dataclasses import dataclass

import pytest

import segdl
import segdl.core.events
import segdl.errors

PACKAGE = pathlib.Path(segdl.__file__).parent

# Standard-library modules that touch the outside world (files, sockets, clocks, threads,
# processes, logging); the pure core may import none of them, at any depth.
IO_MODULES = frozenset(
    {
        "asyncio", "fcntl", "glob", "http", "io", "logging", "mmap", "multiprocessing", "os",
        "pathlib", "random", "secrets", "select", "selectors", "shutil", "signal", "socket",
        "ssl", "subprocess", "sys", "tempfile", "threading", "time", "urllib.request",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """What a layer may import: segdl packages (first component after ``segdl.``) and
    third-party distributions; ``pure`` forbids the standard library's I/O modules."""

    segdl: frozenset[str]
    third_party: frozenset[str] = frozenset()
    pure: bool = False


SHELLS = frozenset({"api", "batch", "cli", "server", "__init__", "__main__"})
BELOW_SHELLS = frozenset({"core", "errors", "io", "engine", "sources", "jobs"})
LAYERS: dict[str, Layer] = {
    "errors": Layer(frozenset(), pure=True),
    "core": Layer(frozenset({"core", "errors"}), pure=True),
    # httpcore: the control plane's transport and network backend (io/control.py), which runs
    # the connector in a trio worker thread; socksio: SOCKS5 on the connector's own socket.
    "io": Layer(
        frozenset({"core", "errors", "io"}),
        frozenset({"httpx", "h11", "httpcore", "socksio", "trio"}),
    ),
    "engine": Layer(
        frozenset({"core", "errors", "io", "engine"}), frozenset({"trio", "trio_websocket"})
    ),
    "sources": Layer(
        frozenset({"core", "errors", "io", "sources"}),
        frozenset({"httpx", "trio", "cryptography"}),
    ),
    "jobs": Layer(BELOW_SHELLS, frozenset({"httpx", "trio"})),
    # Test support shipped with the package (fake servers, nginx): never used by the product.
    "testing": Layer(
        frozenset({"core", "errors", "io", "testing"}), frozenset({"trio", "h11", "cryptography"})
    ),
    # The shells may use any layer below them and one another, but not the test support
    # (except the demo, which serves its file from the test server).
    "api": Layer(BELOW_SHELLS | SHELLS, frozenset({"trio"})),
    "batch": Layer(BELOW_SHELLS | SHELLS, frozenset({"trio"})),
    "__init__": Layer(BELOW_SHELLS | SHELLS),
    "__main__": Layer(BELOW_SHELLS | SHELLS),
    "server": Layer(
        BELOW_SHELLS | {"server", "api"},
        frozenset({"trio", "trio_websocket", "h11", "bson", "cryptography"}),
    ),
    "cli": Layer(BELOW_SHELLS | SHELLS | {"testing"}, frozenset({"trio"})),
}


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """Every module *path* imports, as absolute names, with the line it is imported on."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                base = node.module
            else:
                # "from ..io import files" in segdl.engine.native → segdl.io
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            # "from segdl import io" / "from .. import files": the names may be modules.
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(root: pathlib.Path) -> list[str]:
    """Imports in the package at *root* that break the layer rules, one line each (an import
    statement breaking one rule twice, ``from ..io import files, tls``, counts once)."""
    problems: dict[tuple[str, int, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        layer = layer_of(module)
        rules = LAYERS.get(layer)
        if rules is None:
            problems[(module, 0, "")] = f"{module}: in no known layer (add it to LAYERS)"
            continue
        for line, imported in imports_of(path, root):
            where = f"{path.relative_to(root.parent)}:{line} imports {imported}"
            top = imported.split(".")[0]
            rule = ""
            if top == root.name:
                target = imported.split(".")[1] if "." in imported else "__init__"
                if target not in rules.segdl and target != layer:
                    rule = f"the {layer} layer may not use segdl.{target}"
            elif top in sys.stdlib_module_names or top == "__future__":
                if rules.pure and any(
                    imported == io or imported.startswith(io + ".") for io in IO_MODULES
                ):
                    rule = f"the {layer} layer must stay free of I/O"
            elif top not in rules.third_party:
                rule = f"the {layer} layer may not depend on {top}"
            key = (module, line, rule)
            if rule and key not in problems:
                problems[key] = f"{where}: {rule}"
    return list(problems.values())


def test_every_layer_keeps_to_its_imports() -> None:
    assert violations(PACKAGE) == []


def test_every_module_belongs_to_a_layer() -> None:
    layers = {layer_of(module_name(p, PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(LAYERS)
    assert {"core", "io", "engine", "sources", "jobs", "server", "cli"} <= layers


PLANTED = [
    # (file, line planted, what the checker must say)
    ("core/pieces.py", "from ..io import files", "the core layer may not use segdl.io"),
    ("core/pieces.py", "import socket", "the core layer must stay free of I/O"),
    ("core/headers.py", "from urllib.request import urlopen", "must stay free of I/O"),
    ("core/progress.py", "import trio", "the core layer may not depend on trio"),
    ("io/files.py", "from ..engine import target", "the io layer may not use segdl.engine"),
    ("engine/native.py", "from segdl.sources import civitai", "may not use segdl.sources"),
    ("sources/direct.py", "from ..jobs import flow", "the sources layer may not use segdl.jobs"),
    ("errors.py", "import os", "the errors layer must stay free of I/O"),
]


@pytest.mark.parametrize(("file", "line", "message"), PLANTED)
def test_the_layer_test_catches_a_planted_import(
    tmp_path: pathlib.Path, file: str, line: str, message: str
) -> None:
    copy = tmp_path / "segdl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    assert violations(copy) == []
    target = copy / file
    source = target.read_text("utf-8")
    # Inside a function, as a lazy import would be: still found.
    target.write_text(f"{source}\n\ndef _planted() -> None:\n    {line}\n", "utf-8")
    found = violations(copy)
    assert len(found) == 1, found
    assert message in found[0]
    assert file in found[0]


def test_the_public_api_exports_every_exception_and_event() -> None:
    public = set(segdl.__all__)
    assert len(public) == len(segdl.__all__), "a name is listed twice"
    errors = {
        name
        for name in segdl.errors.__all__
        if isinstance(getattr(segdl.errors, name), type)
        and issubclass(getattr(segdl.errors, name), segdl.DownloadError)
    }
    events = set(segdl.core.events.__all__) - {"deprecated_name"}
    missing = (errors | events) - public
    assert not missing, f"not exported from segdl: {sorted(missing)}"
    for name in segdl.__all__:
        assert getattr(segdl, name) is not None, name
    # The exceptions form one tree, under the one base class users catch.
    for name in errors:
        assert issubclass(getattr(segdl, name), segdl.DownloadError)
