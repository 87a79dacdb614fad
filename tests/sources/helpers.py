"""What the source tests share: running a download and collecting its events."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import trio

import segdl

FAST = segdl.Options(save_interval=0.05, progress_interval=0.05)


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Recorder:
    """An ``on_event`` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[segdl.Event] = []

    def __call__(self, event: segdl.Event) -> None:
        self.events.append(event)

    def of(self, kind: type[segdl.Event]) -> list[segdl.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def metadata(self) -> segdl.Metadata:
        found = [e for e in self.events if isinstance(e, segdl.Metadata)]
        assert len(found) == 1, self.events
        return found[0]


async def interrupted(
    url: str,
    directory: pathlib.Path,
    *,
    after_bytes: int,
    civitai_token: str | None = None,
    hf_token: str | None = None,
) -> None:
    """Start a download and cancel it (trio cancel scope) once *after_bytes* are written."""
    with trio.CancelScope() as scope:

        def on_event(event: segdl.Event) -> None:
            if isinstance(event, segdl.Progress) and event.downloaded >= after_bytes:
                scope.cancel()

        await segdl.download(
            url,
            directory,
            options=FAST,
            on_event=on_event,
            civitai_token=civitai_token,
            hf_token=hf_token,
        )
    assert scope.cancelled_caught


def files_in(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def prepare_source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """No token or site URL from the real environment, the metadata cache under *tmp_path*;
    returns the download directory.  Each test module wraps it in a ``source_env`` fixture (a
    second conftest.py would clash with the top one for mypy)."""
    for name in ("CIVITAI_TOKEN", "HF_TOKEN", "HF_ENDPOINT", "SEGDL_CIVITAI_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SEGDL_GDRIVE_URL", "SEGDL_MEGA_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGDL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    return out
