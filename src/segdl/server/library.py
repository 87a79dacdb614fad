"""The ``options`` reply: the model files in the models directory, by folder.

qDiffusion indexes ``UNET``, ``CLIP``, ``VAE`` and ``model_types`` directly, so those are
always present (reference sd-protocol.md §7).  Names are paths relative to the models
directory with ``/`` separators (``SD/foo.safetensors``), as sd-inference-server sends them.
Unfinished downloads (a file with a ``.aria2`` control file beside it) are not listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.folders import FOLDERS

__all__ = ["list_models"]

MODEL_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".onnx"})
CONTROL_SUFFIX = ".aria2"


def _files(folder: Path, models_dir: Path) -> list[str]:
    if not folder.is_dir():
        return []
    names = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in MODEL_SUFFIXES or not path.is_file():
            continue
        if path.with_name(path.name + CONTROL_SUFFIX).exists():
            continue  # still downloading
        names.append(path.relative_to(models_dir).as_posix())
    return sorted(names, key=str.lower)


def list_models(models_dir: Path) -> dict[str, Any]:
    """Blocking (it walks the disk): call it in a worker thread."""
    by_folder = {folder: _files(models_dir / folder, models_dir) for folder in FOLDERS}
    checkpoints = [n for n in by_folder["SD"] if ".vae." not in n.lower()]
    vaes = [n for n in by_folder["SD"] if ".vae." in n.lower()] + by_folder["VAE"]
    return {
        **by_folder,
        "UNET": checkpoints,
        "CLIP": checkpoints,
        "VAE": vaes,
        "model_types": dict.fromkeys(by_folder["LoRA"], "LoRA"),
        "sampler": [],
        "device": "segdl (downloads only)",
    }
