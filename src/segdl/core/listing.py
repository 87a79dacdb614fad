"""Which files the ``options`` reply lists, and under which keys, as sd-inference-server does.

The rules come from sd-inference-server's ``storage.py`` (``MODEL_FOLDERS``,
``ModelStorage.get_models`` and ``find_all``):

- each kind of model is looked for in a few folders of the models directory, recursively
  except ControlNets, with per-kind glob patterns (``SD``: ``*.safetensors *.ckpt *.pt``;
  ``SR``: ``*.pth *.pt *.safetensors``; ``TI``: ``*.pt *.safetensors *.bin``; ``LoRA`` and
  ``Detailer``: ``*.safetensors *.pt``; ``CN``: ``*.safetensors *.pth``);
- a path with a component starting with ``_`` is skipped, and ``glob`` skips hidden names;
- an SD file named ``*.unet.*``, ``*.clip.*`` or ``*.vae.*`` is only that component; any
  other is a whole checkpoint, listed under ``UNET``, ``CLIP`` and ``VAE`` alike (qDiffusion
  offers as models the names present in all three: ``parameters.py`` ``optionsUpdated``);
- names are paths relative to the models directory (``SD/a.safetensors``).

Where segdl differs, on purpose: extensions match in any case; a file in the ``VAE`` folder
(where segdl puts downloads of type ``VAE``) is a VAE, not a checkpoint; the
``../embeddings`` folder outside the models directory and diffusers folders are not listed;
``HN`` (which older versions scanned in ``HN`` and ``hypernetworks``) is listed with the
``*.pt *.safetensors`` patterns, since older qDiffusion versions index ``options["HN"]``.
Files still being written are never listed: a partial name (``.part``, ``.tmp`` …) has no
model extension, and a file with an aria2 control file or segdl validators beside it is
unfinished.  Pure: the caller walks the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEVICE",
    "SCANS",
    "UNFINISHED_MARKERS",
    "FolderScan",
    "build_options",
    "is_model_file",
    "sd_components",
]


@dataclass(frozen=True)
class FolderScan:
    folders: tuple[str, ...]  # inside the models directory, in the order they are listed
    extensions: frozenset[str]  # lower case, with the dot
    recursive: bool = True


SCANS: Final[Mapping[str, FolderScan]] = {
    "SD": FolderScan(
        ("SD", "Stable-diffusion", "VAE"), frozenset({".safetensors", ".ckpt", ".pt"})
    ),
    "SR": FolderScan(("SR", "ESRGAN", "RealESRGAN"), frozenset({".pth", ".pt", ".safetensors"})),
    "TI": FolderScan(("TI", "embeddings"), frozenset({".pt", ".safetensors", ".bin"})),
    "LoRA": FolderScan(("LoRA", "LyCORIS"), frozenset({".safetensors", ".pt"})),
    "CN": FolderScan(("CN",), frozenset({".safetensors", ".pth"}), recursive=False),
    "Detailer": FolderScan(("Detailer",), frozenset({".safetensors", ".pt"})),
    "HN": FolderScan(("HN", "hypernetworks"), frozenset({".pt", ".safetensors"})),
}

# A sidecar beside NAME meaning NAME is not finished: aria2's control file (segdl's too)
# and segdl's validators.
UNFINISHED_MARKERS: Final = (".aria2", ".segdl")

# qDiffusion shows this in its device list; generation requests would name it back.
DEVICE: Final = "segdl (downloads only)"

_COMPONENTS: Final = {".unet.": "UNET", ".clip.": "CLIP", ".vae.": "VAE"}


def is_model_file(scan: FolderScan, parts: Sequence[str], siblings: Iterable[str] = ()) -> bool:
    """Is the file at *parts* (its path inside one of *scan*'s folders) listed?

    *siblings* are the other names in its directory (to see an unfinished download's
    sidecar).
    """
    if not parts:
        return False
    if not scan.recursive and len(parts) > 1:
        return False
    # glob skips hidden names; sd-inference-server skips any "_" component.
    if any(part.startswith((".", "_")) or not part for part in parts):
        return False
    name = parts[-1]
    dot = name.rfind(".")
    if dot <= 0 or name[dot:].lower() not in scan.extensions:
        return False
    others = set(siblings)
    return not any(name + marker in others for marker in UNFINISHED_MARKERS)


def sd_components(folder: str, name: str) -> tuple[str, ...]:
    """The option keys an SD-scan file belongs to: a checkpoint is all three."""
    if folder == "VAE":
        return ("VAE",)
    lowered = name.lower()
    for infix, component in _COMPONENTS.items():
        if infix in lowered:
            return (component,)
    return ("UNET", "CLIP", "VAE")


def build_options(found: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """The ``options`` reply from the listed files: for each scan kind, ``(folder, name)``
    pairs with *name* relative to the models directory (``/`` separators).

    Every key qDiffusion reads is present (``parameters.py`` ``optionsUpdated``: a key ``K``
    fills its ``Ks`` list; ``UNET``, ``CLIP`` and ``VAE`` are indexed directly), and every
    value qDiffusion iterates is a list: ``device`` too, or qDiffusion's typed settings map
    would turn a string into a list of its characters.
    """

    def ordered(names: Iterable[str]) -> list[str]:
        return sorted(dict.fromkeys(names), key=lambda n: (n.lower(), n))

    components: dict[str, list[str]] = {"UNET": [], "CLIP": [], "VAE": []}
    for folder, name in found.get("SD", ()):
        for component in sd_components(folder, name.rsplit("/", 1)[-1]):
            components[component].append(name)
    listed = {kind: ordered(name for _, name in found.get(kind, ())) for kind in SCANS}
    return {
        # What sd-inference-server's wrapper sends, in its order (reference sd-protocol.md §7).
        "sampler": [],
        "UNET": ordered(components["UNET"]),
        "CLIP": ordered(components["CLIP"]),
        "VAE": ordered(components["VAE"]),
        "SR": listed["SR"],
        "LoRA": listed["LoRA"],
        "CN": listed["CN"],
        "AN": [],
        "Detailer": listed["Detailer"],
        # Without reading the files segdl cannot tell LoCon from LoHa: "LoRA" for all.
        "model_types": dict.fromkeys(listed["LoRA"], "LoRA"),
        "hr_upscaler": [],
        "img2img_upscaler": [],
        "attention": [],
        "TI": listed["TI"],
        "device": [DEVICE],
        # Older qDiffusion versions index it (their explorer.py).
        "HN": listed["HN"],
    }
