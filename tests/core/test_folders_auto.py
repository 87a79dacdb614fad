"""``--type auto``: a CivitAI model's type names its folder, or it is refused in one line."""

from __future__ import annotations

import pytest

from segdl.core.folders import FOLDERS, civitai_folder, model_folder


@pytest.mark.parametrize(
    ("model_type", "folder"),
    [
        ("Checkpoint", "SD"),
        ("LORA", "LoRA"),
        ("LoCon", "LoRA"),
        ("DoRA", "LoRA"),
        ("TextualInversion", "TI"),
        ("Hypernetwork", "HN"),
        ("VAE", "VAE"),
        ("Upscaler", "SR"),
        ("Controlnet", "CN"),
        ("Detection", "Detailer"),
    ],
)
def test_types_with_a_folder(model_type: str, folder: str) -> None:
    assert civitai_folder(model_type) == folder
    assert folder in FOLDERS
    assert model_folder(folder) == folder  # what the server's allow-list accepts


@pytest.mark.parametrize(
    "model_type",
    [
        "MotionModule",
        "Poses",
        "Wildcards",
        "Workflows",
        "ComfyWorkflows",
        "AestheticGradient",
        "TextEncoder",
        "CLIPVision",
        "LLM",
        "Other",
        "",
        None,
    ],
)
def test_types_without_a_folder_are_refused_in_one_line(model_type: str | None) -> None:
    with pytest.raises(ValueError, match="has no models folder") as info:
        civitai_folder(model_type)
    message = str(info.value)
    assert "\n" not in message
    assert "--type" in message
    assert repr(model_type or "unknown") in message


def test_the_file_type_wins_for_a_checkpoints_vae_and_non_models() -> None:
    assert civitai_folder("Checkpoint", "VAE") == "VAE"
    assert civitai_folder("Checkpoint", "Model") == "SD"
    assert civitai_folder("LORA", "Pruned Model") == "LoRA"
    with pytest.raises(ValueError, match="'Training Data', not a model"):
        civitai_folder("LORA", "Training Data")


def test_a_hostile_type_is_shown_short() -> None:
    with pytest.raises(ValueError, match="has no models folder") as info:
        civitai_folder("x" * 10_000)
    assert len(str(info.value)) < 300
