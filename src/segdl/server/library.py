"""The ``options`` reply: the model files in the models directory, as qDiffusion reads them.

Which files, and under which keys, is :mod:`segdl.core.listing` (sd-inference-server's
``storage.py`` rules); this module walks the disk.  Names are paths relative to the models
directory with ``/`` separators (``SD/foo.safetensors``), as sd-inference-server sends them.
Symbolic links to directories are not followed (a loop would never end); linked files are
listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.listing import SCANS, FolderScan, build_options, is_model_file

__all__ = ["list_models"]


def _scan(models_dir: Path, folder: str, scan: FolderScan) -> list[tuple[str, str]]:
    root = models_dir / folder
    found: list[tuple[str, str]] = []
    for directory, subdirectories, files in os.walk(root):
        relative = Path(directory).relative_to(root).parts
        if not scan.recursive:
            subdirectories.clear()
        # Pruned here, so a hidden or "_" tree is never walked at all.
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith((".", "_")))
        names = set(files)
        for name in files:
            if is_model_file(scan, (*relative, name), names):
                found.append((folder, "/".join((folder, *relative, name))))
    return found


def list_models(models_dir: Path) -> dict[str, Any]:
    """Blocking (it walks the disk): call it in a worker thread."""
    found = {
        kind: [entry for folder in scan.folders for entry in _scan(models_dir, folder, scan)]
        for kind, scan in SCANS.items()
    }
    return build_options(found)
