"""The pure side of model metadata: secrets kept out, names, formats the SD tools read."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.modelinfo import (
    CivitAIRecord,
    HuggingFaceRecord,
    choose_preview,
    format_site_date,
    html_to_text,
    huggingface_info,
    image_suffix,
    is_model_file_name,
    metadata_names,
    scrub_secrets,
    to_json_bytes,
    webui_sd_version,
    webui_user_metadata,
)

TOKEN_ALPHABET = string.ascii_letters + string.digits + "_-"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    value=json_values,
    secret=st.text(TOKEN_ALPHABET, min_size=8, max_size=16),
    positions=st.lists(st.integers(0, 40), max_size=3),
)
def test_a_token_never_survives_scrubbing(value: object, secret: str, positions: list[int]) -> None:
    # Plant the secret inside strings (and keys), at several places, even split by itself.
    def plant(v: object) -> object:
        if isinstance(v, str):
            for p in positions:
                v = v[:p] + secret + v[p:]
            return v
        if isinstance(v, list):
            return [plant(x) for x in v]
        if isinstance(v, dict):
            return {plant(k): plant(x) for k, x in v.items()}
        return v

    planted = plant(value)
    cleaned = json.dumps(scrub_secrets(planted, [secret]), ensure_ascii=False)
    assert secret not in cleaned


@given(value=json_values)
def test_scrubbing_without_secrets_or_urls_changes_nothing(value: object) -> None:
    def has_url(v: object) -> bool:
        if isinstance(v, str):
            return "://" in v
        if isinstance(v, list):
            return any(has_url(x) for x in v)
        if isinstance(v, dict):
            return any(has_url(k) or has_url(x) for k, x in v.items())
        return False

    if not has_url(value):
        assert scrub_secrets(value, []) == value


def test_signed_urls_lose_their_query_and_plain_ones_keep_it() -> None:
    record = {
        "storage": "https://r2.example/obj?X-Amz-Expires=86400&X-Amz-Signature=abc&x=1",
        "b2": "https://b2.example/f?Authorization=3_xyz&b2ContentDisposition=a",
        "cf": "https://cdn.example/f?Expires=1&Signature=s&Key-Pair-Id=k",
        "token": "https://civitai.com/api/download/models/1?token=abc",
        "image": "https://image.civitai.com/x/uuid/original=true/1.jpeg",
        "paged": "https://civitai.com/api/v1/models?page=2&limit=5",
    }
    cleaned = scrub_secrets(record)
    assert cleaned == {
        "storage": "https://r2.example/obj",
        "b2": "https://b2.example/f",
        "cf": "https://cdn.example/f",
        "token": "https://civitai.com/api/download/models/1",
        "image": "https://image.civitai.com/x/uuid/original=true/1.jpeg",
        "paged": "https://civitai.com/api/v1/models?page=2&limit=5",
    }


def test_short_or_missing_secrets_do_not_erase_text() -> None:
    assert scrub_secrets({"a": "abc def"}, [None, "", "abc"]) == {"a": "abc def"}


@pytest.mark.parametrize(
    ("name", "info", "user", "first_preview"),
    [
        ("dream.safetensors", "dream.civitai.info", "dream.json", "dream.png"),
        ("v1.5-pruned.ckpt", "v1.5-pruned.civitai.info", "v1.5-pruned.json", "v1.5-pruned.png"),
        ("noext", "noext.civitai.info", "noext.json", "noext.png"),
    ],
)
def test_metadata_names_follow_splitext(
    name: str, info: str, user: str, first_preview: str
) -> None:
    names = metadata_names(name)
    assert names.civitai_info == info
    assert names.user_metadata == user
    assert names.existing_previews[0] == first_preview
    assert names.preview(".jpg") == user.removesuffix(".json") + ".preview.jpg"
    # Everything A1111's find_preview would show is known, both NAME.ext and NAME.preview.ext.
    stem = user.removesuffix(".json")
    for ext in ("png", "jpg", "jpeg", "webp", "gif"):
        assert f"{stem}.{ext}" in names.existing_previews
        assert f"{stem}.preview.{ext}" in names.existing_previews


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("a.safetensors", True),
        ("A.SAFETENSORS", True),
        ("b.gguf", True),
        ("c.pth", True),
        ("config.json", False),
        ("a.safetensors.part", False),
        ("a.safetensors.aria2", False),
        ("a.safetensors.tmp", False),
        ("README.md", False),
    ],
)
def test_model_file_names(name: str, model: bool) -> None:
    assert is_model_file_name(name) is model


@pytest.mark.parametrize(
    ("base", "version"),
    [
        ("SD 1.5", "SD1"),
        ("SD 1.4", "SD1"),
        ("SD 1.5 LCM", "SD1"),
        ("SD 2.1 768", "SD2"),
        ("SD 2.0", "SD2"),
        ("SDXL 1.0", "SDXL"),
        ("SDXL Turbo", "SDXL"),
        ("Pony", "SDXL"),
        ("Illustrious", "SDXL"),
        ("NoobAI", "SDXL"),
        ("SD 3.5 Large", "SD3"),
        ("Flux.1 D", "Flux"),
        ("Stable Cascade", "Unknown"),
        ("Wan Video 14B t2v", "Unknown"),
        ("SD 10", "Unknown"),
        (None, "Unknown"),
    ],
)
def test_sd_version_names_what_a1111_and_forge_filter_by(base: str | None, version: str) -> None:
    assert webui_sd_version(base) == version


def civitai_record(model_type: str = "LORA", **version: object) -> CivitAIRecord:
    body: dict[str, object] = {
        "id": 2002,
        "modelId": 1001,
        "name": "v2.0",
        "baseModel": "SDXL 1.0",
        "trainedWords": ["dreamy", " soft light ", ""],
        "description": "<p>Version <b>two</b>.</p>",
        "model": {"name": "Dream Model", "type": model_type},
        **version,
    }
    return CivitAIRecord(
        version=body,
        model={"description": "<p>A model of &amp; for dreams.</p><script>x()</script>"},
        site="https://civitai.com",
    )


def test_a1111_user_metadata_for_a_lora() -> None:
    doc = webui_user_metadata(civitai_record())
    assert doc["description"] == "A model of & for dreams."
    assert doc["sd version"] == "SDXL"
    assert doc["activation text"] == "dreamy, soft light"
    assert doc["preferred weight"] == 0
    notes = doc["notes"]
    assert isinstance(notes, str)
    assert "https://civitai.com/models/1001?modelVersionId=2002" in notes
    assert "Version two." in notes
    # Exactly the keys A1111/Forge's Lora page reads or edits.
    assert set(doc) <= {
        "description",
        "sd version",
        "activation text",
        "preferred weight",
        "negative text",
        "notes",
    }


def test_a_checkpoint_gets_no_preferred_weight_and_version_text_as_description() -> None:
    record = civitai_record("Checkpoint")
    record = CivitAIRecord(version=record.version, site=record.site)  # no model JSON
    doc = webui_user_metadata(record)
    assert "preferred weight" not in doc
    assert doc["description"] == "Version two."


def test_json_is_ascii_with_four_spaces_as_the_tools_write_it() -> None:
    data = to_json_bytes({"name": "Träume", "n": 1})
    data.decode("ascii")
    assert b'\n    "name": "Tr\\u00e4ume"' in data
    assert json.loads(data) == {"name": "Träume", "n": 1}


def image(level: int | None = 1, kind: str = "image", n: int = 0, **extra: object) -> object:
    data: dict[str, object] = {"url": f"https://image.example/{n}.jpeg", "type": kind, **extra}
    if level is not None:
        data["nsfwLevel"] = level
    return data


def test_preview_is_the_first_safe_still_image() -> None:
    images = [image(8, n=0), image(1, "video", n=1), image(4, n=2), image(2, n=3), image(1, n=4)]
    assert choose_preview(images) == "https://image.example/3.jpeg"
    assert choose_preview(images, include_nsfw=True) == "https://image.example/0.jpeg"


def test_preview_never_blocked_nor_unrated_unless_asked() -> None:
    assert choose_preview([image(32 | 1), image(0)]) is None
    assert choose_preview([image(32), image(0, n=1)], include_nsfw=True) == (
        "https://image.example/1.jpeg"
    )


def test_older_answers_rate_images_with_nsfw() -> None:
    old = [image(None, nsfw="Mature", n=0), image(None, nsfw="None", n=1)]
    assert choose_preview(old) == "https://image.example/1.jpeg"
    assert choose_preview([image(None, nsfw=False, n=5)]) == "https://image.example/5.jpeg"
    assert choose_preview([image(None, n=6)]) is None  # no rating at all: not known safe


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "url": st.sampled_from(["https://i.example/a.png", "ftp://x/y", ""]),
                "type": st.sampled_from(["image", "video", "audio"]),
                "nsfwLevel": st.integers(0, 63),
            }
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_a_chosen_preview_is_always_allowed(images: list[dict[str, object]], nsfw: bool) -> None:
    url = choose_preview(images, include_nsfw=nsfw)
    allowed = [
        i
        for i in images
        if i["type"] == "image"
        and str(i["url"]).startswith("https://")
        and not int(str(i["nsfwLevel"])) & 32
        and (nsfw or int(str(i["nsfwLevel"])) in (1, 2, 3))
    ]
    assert url == (allowed[0]["url"] if allowed else None)


@pytest.mark.parametrize(
    ("head", "suffix"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ".png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", ".jpg"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", ".webp"),
        (b"GIF89a\x01\0\x01\0", ".gif"),
        (b"\0\0\0\x18ftypmp42", None),  # a video
        (b"<html>", None),
        (b"", None),
    ],
)
def test_image_suffix_from_the_bytes(head: bytes, suffix: str | None) -> None:
    assert image_suffix(head) == suffix


def test_html_to_text_keeps_paragraphs_and_drops_markup() -> None:
    html = (
        "<h1>Title</h1><p>First &lt;line&gt;<br>second</p>"
        "<ul><li>one</li><li>two</li></ul><style>p{}</style><p>  spaced   out </p>"
    )
    assert html_to_text(html) == "Title\n\nFirst <line>\nsecond\n\none\n\ntwo\n\nspaced out"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-12-31T00:00:00.000Z", "2026-12-31 00:00 UTC"),
        ("2026-12-31T02:30:00+02:00", "2026-12-31 00:30 UTC"),
        ("2026-12-31", "2026-12-31 00:00 UTC"),
        ("soon", None),
        (None, None),
        (17, None),
    ],
)
def test_site_dates(value: object, shown: str | None) -> None:
    assert format_site_date(value) == shown


def test_hugging_face_info_names_repo_commit_and_sha256() -> None:
    record = HuggingFaceRecord(
        endpoint="https://huggingface.co",
        repo="acme/diffusion",
        revision="refs/pr/1",
        path="unet/model v2.safetensors",
        commit="c0ffee" + "0" * 34,
        sha256="ab" * 32,
        size=10,
        sha256_from="X-Linked-Etag",
    )
    doc = huggingface_info(record)
    source = doc["huggingface"]
    assert source == {
        "repo": "acme/diffusion",
        "revision": "refs/pr/1",
        "commit": "c0ffee" + "0" * 34,
        "path": "unet/model v2.safetensors",
        "sha256": "ab" * 32,
        "sha256_from": "X-Linked-Etag",
        "size": 10,
        "url": "https://huggingface.co/acme/diffusion/resolve/c0ffee"
        + "0" * 34
        + "/unet/model%20v2.safetensors",
    }
    assert "acme/diffusion" in str(doc["description"])
