"""Fixtures shared by the whole test suite.

One section per kind of helper; add new fixtures to the matching section (or a new one).
Servers are started here and always stopped after the test, whatever it did.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segdl.testing.nginx import Nginx, NginxFactory, find_nginx
from segdl.testing.rangeserver import RangeServer
from segdl.testing.tls import CertPair, make_self_signed


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_program(name: str, found: bool) -> None:
    """Skip a test that needs an external program, except on CI, where it must be there."""
    if found:
        return
    message = f"{name} is not installed"
    if _on_ci():
        pytest.fail(f"{message}, and CI=true forbids skipping", pytrace=False)
    pytest.skip(message)


# ---- in-process servers


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    """A started RangeServer on 127.0.0.1; stopped (every thread joined) after the test."""
    with RangeServer() as server:
        yield server
    assert not server.errors, f"the fake server itself failed: {server.errors!r}"


# ---- TLS


@pytest.fixture
def tls_pair(tmp_path: Path) -> CertPair:
    """A self-signed certificate for 127.0.0.1 and localhost (it is its own CA file)."""
    return make_self_signed(tmp_path / "tls")


# ---- external programs


@pytest.fixture
def nginx_server(tmp_path: Path) -> Iterator[NginxFactory]:
    """Start nginx instances serving a directory: ``nginx_server(root, certfile=…)``."""
    require_program("nginx", find_nginx() is not None)
    started: list[Nginx] = []

    def start(
        root: Path,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        limit_rate: str | None = None,
        workers: int = 1,
        access_log: bool = True,
        log_format: str | None = None,
    ) -> Nginx:
        server = Nginx(
            root,
            certfile=certfile,
            keyfile=keyfile,
            limit_rate=limit_rate,
            workers=workers,
            access_log=access_log,
            log_format=log_format,
            workdir=tmp_path / f"nginx-{len(started)}",
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


# ---- figures of the reliability suite


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Print the figures ``tests/reliability/support.py`` counted, when it counted any, and
    write them as JSON to ``$SEGDL_FIGURES`` if that is set (for the README)."""
    # Looked up, not imported: importing it here would make a second copy of its counters.
    support = sys.modules.get("support")
    figures = None if support is None else vars(support).get("FIGURES")
    if figures is None or not figures.recorded:
        return
    terminalreporter.write_sep("=", "reliability figures")
    for line in figures.summary_lines():
        terminalreporter.write_line(line)
    target = os.environ.get("SEGDL_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures.as_dict(), indent=1) + "\n", encoding="utf-8")
