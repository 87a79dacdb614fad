"""The model-type allow-list: which sub-folder of the models directory a download goes to.

sd-inference-server uses the request's ``type`` as a folder name unchecked (reference
sd-protocol.md §5), so ``"../../etc"`` would escape the models directory.  segdl accepts only
the folder names that server scans (``SD``, ``LoRA``, ``TI``, ``SR``, ``CN``, ``HN``, ``VAE``,
``Detailer``; ``VAE`` is one of the folders it scans for SD models) and a few friendly
aliases.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

__all__ = ["AUTO", "FOLDERS", "civitai_folder", "model_folder"]

# ``--type auto`` / ``"type": "auto"``: the folder comes from the model's own type.
AUTO: Final = "auto"

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


# CivitAI's ModelType enum (reference/sources.md §1.5, spelled as the API sends it) → folder.
# Detection models on CivitAI are ADetailer's YOLO detectors.  The other types (workflows,
# wildcards, poses, motion modules, text encoders, LLMs…) have no folder sd-inference-server
# scans; they are refused rather than guessed.
_CIVITAI_TYPES: Final[dict[str, str]] = {
    "checkpoint": "SD",
    "lora": "LoRA",
    "locon": "LoRA",
    "dora": "LoRA",
    "textualinversion": "TI",
    "hypernetwork": "HN",
    "vae": "VAE",
    "upscaler": "SR",
    "controlnet": "CN",
    "detection": "Detailer",
}
# A version's extra files that belong elsewhere than its model: a checkpoint's baked-in VAE
# is published as its own file of type "VAE"; training data and archives are no models.
_CIVITAI_FILE_TYPES: Final[dict[str, str | None]] = {
    "vae": "VAE",
    "trainingdata": None,
    "archive": None,
}


def civitai_folder(model_type: str | None, file_type: str | None = None) -> str:
    """The models sub-folder for a CivitAI model of *model_type* (its file of *file_type*).

    Raises:
        ValueError: the type has no folder; one line saying so and what to do instead.
    """
    shown = (model_type or "unknown")[:40]
    folder = _CIVITAI_TYPES.get(_normalise(model_type or ""))
    if folder is None:
        raise ValueError(
            f"CivitAI model type {shown!r} has no models folder: choose one with --type "
            f"({', '.join(FOLDERS)}) or download it without --type"
        )
    if file_type is not None and _normalise(file_type) in _CIVITAI_FILE_TYPES:
        own = _CIVITAI_FILE_TYPES[_normalise(file_type)]
        if own is None:
            raise ValueError(
                f"this CivitAI file is {file_type[:40]!r}, not a model: it has no models "
                "folder; download it without --type"
            )
        return own
    return folder
