"""Child processes, read from ``/proc`` (Linux): for tests that must leave none behind."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["child_processes"]


def child_processes(name: str | None = None, *, parent: int | None = None) -> list[int]:
    """Pids of the processes whose parent is *parent* (default: this process), zombies
    included, optionally only those whose command name is *name*."""
    parent = os.getpid() if parent is None else parent
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent and name in (None, comm):
            found.append(int(entry.name))
    return found
