"""The ``options`` listing rules (sd-inference-server's storage.py) and the reply's shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.listing import SCANS, build_options, is_model_file, sd_components


@pytest.mark.parametrize(
    ("kind", "parts", "listed"),
    [
        ("SD", ["a.safetensors"], True),
        ("SD", ["a.SAFETENSORS"], True),
        ("SD", ["deep", "er", "a.ckpt"], True),
        ("SD", ["a.bin"], False),
        ("SD", ["a.safetensors.part"], False),
        ("SD", ["a.safetensors.aria2"], False),
        ("SD", ["a.safetensors.upload.part"], False),
        ("SD", [".a.safetensors"], False),
        ("SD", ["_old", "a.safetensors"], False),
        ("SD", ["_a.safetensors"], False),
        ("SD", [".git", "a.safetensors"], False),
        ("SD", [".safetensors"], False),
        ("LoRA", ["a.bin"], False),
        ("LoRA", ["a.pt"], True),
        ("TI", ["a.bin"], True),
        ("TI", ["a.ckpt"], False),
        ("SR", ["a.pth"], True),
        ("SR", ["a.onnx"], False),
        ("CN", ["a.pth"], True),
        ("CN", ["annotators", "a.pth"], False),  # CN is not searched recursively
        ("Detailer", ["a.pt"], True),
        ("Detailer", ["a.pth"], False),
    ],
)
def test_what_is_listed(kind: str, parts: list[str], listed: bool) -> None:
    assert is_model_file(SCANS[kind], parts) is listed


def test_a_file_with_a_download_sidecar_is_unfinished() -> None:
    scan = SCANS["SD"]
    assert not is_model_file(scan, ["a.safetensors"], {"a.safetensors", "a.safetensors.aria2"})
    assert not is_model_file(scan, ["a.safetensors"], {"a.safetensors.segdl"})
    assert is_model_file(scan, ["a.safetensors"], {"a.safetensors", "b.safetensors.aria2"})


@pytest.mark.parametrize(
    ("folder", "name", "components"),
    [
        ("SD", "model.safetensors", ("UNET", "CLIP", "VAE")),
        ("SD", "model.vae.pt", ("VAE",)),
        ("SD", "model.VAE.safetensors", ("VAE",)),
        ("SD", "model.unet.safetensors", ("UNET",)),
        ("SD", "model.clip.safetensors", ("CLIP",)),
        ("Stable-diffusion", "x.ckpt", ("UNET", "CLIP", "VAE")),
        ("VAE", "plain.safetensors", ("VAE",)),
    ],
)
def test_sd_components(folder: str, name: str, components: tuple[str, ...]) -> None:
    assert sd_components(folder, name) == components


names = st.lists(
    st.tuples(
        st.sampled_from(["SD", "Stable-diffusion", "VAE"]),
        st.text("abcXYZ._-", min_size=1, max_size=12).map(lambda s: s + ".safetensors"),
    ),
    max_size=20,
)


@given(sd=names, lora=st.lists(st.text("abc", min_size=1, max_size=5), max_size=5))
def test_reply_shape(sd: list[tuple[str, str]], lora: list[str]) -> None:
    found = {
        "SD": [(folder, f"{folder}/{name}") for folder, name in sd],
        "LoRA": [("LoRA", f"LoRA/{n}.pt") for n in lora],
    }
    options = build_options(found)
    for key in ("UNET", "CLIP", "VAE", "SR", "LoRA", "CN", "AN", "Detailer", "TI", "HN"):
        assert isinstance(options[key], list)
        assert all(isinstance(name, str) for name in options[key])
        assert options[key] == sorted(set(options[key]), key=lambda n: (n.lower(), n))
    assert options["device"] == ["segdl (downloads only)"]
    assert set(options["model_types"]) == set(options["LoRA"])
    checkpoints = set(options["UNET"]) & set(options["CLIP"]) & set(options["VAE"])
    for folder, name in sd:
        path = f"{folder}/{name}"
        whole = folder != "VAE" and not any(
            infix in name.lower() for infix in (".unet.", ".clip.", ".vae.")
        )
        assert (path in checkpoints) is whole
        assert any(path in options[k] for k in ("UNET", "CLIP", "VAE"))
