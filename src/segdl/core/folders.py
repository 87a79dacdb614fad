"""The model-type allow-list: which sub-folder of the models directory a download goes to.

sd-inference-server uses the request's ``type`` as a folder name unchecked (reference
sd-protocol.md §5), so ``"../../etc"`` would escape the models directory.  segdl accepts only
the folder names that server scans (``SD``, ``LoRA``, ``TI``, ``SR``, ``CN``, ``HN``, ``VAE``,
``Detailer``; ``VAE`` is one of the folders it scans for SD models) and a few friendly
aliases.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FOLDERS", "model_folder"]

# The canonical folder names, in the order a user interface lists them.
FOLDERS: Final[tuple[str, ...]] = ("SD", "LoRA", "TI", "SR", "CN", "HN", "VAE", "Detailer")

_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "SD": ("checkpoint", "checkpoints", "model", "stablediffusion", "unet"),
    "LoRA": ("loras", "lycoris", "locon"),
    "TI": ("embedding", "embeddings", "textualinversion"),
    "SR": ("upscaler", "upscalers", "esrgan", "realesrgan"),
    "CN": ("controlnet", "controlnets"),
    "HN": ("hypernetwork", "hypernetworks"),
    "VAE": ("vaes",),
    "Detailer": ("detailers", "adetailer"),
}


def _normalise(name: str) -> str:
    """Case, spaces, ``-`` and ``_`` don't matter: "Textual Inversion" is "textual_inversion"."""
    return "".join(c for c in name.strip().lower() if c not in " -_")


_LOOKUP: Final[dict[str, str]] = {
    _normalise(alias): folder for folder in FOLDERS for alias in (folder, *_ALIASES[folder])
}


def model_folder(type: str) -> str:
    """The models sub-folder for a download ``type`` (a folder name or a friendly alias).

    Raises:
        ValueError: *type* is not on the allow-list; the message lists what is.
    """
    folder = _LOOKUP.get(_normalise(type)) if isinstance(type, str) else None
    if folder is None:
        shown = type[:40] if isinstance(type, str) else type.__class__.__name__
        raise ValueError(
            f"unknown model type {shown!r}: use one of {', '.join(FOLDERS)} "
            "(or checkpoint, lora, embedding, upscaler, controlnet, hypernetwork, vae, detailer)"
        )
    return folder
