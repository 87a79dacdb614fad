"""Typed download events: what the library callback, ``--json`` and the server send.

The names and fields are the contract in DESIGN.md "Events".  ``to_dict()`` gives the wire
form: ``{"type": "progress", "progress": 0.5, …}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

__all__ = [
    "Cancelled",
    "Error",
    "Event",
    "Metadata",
    "Progress",
    "Started",
    "Success",
]


@dataclass(frozen=True, slots=True)
class _EventBase:
    type: ClassVar[str]

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True, slots=True)
class Started(_EventBase):
    type: ClassVar[Literal["started"]] = "started"
    filename: str
    size: int | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Metadata(_EventBase):
    type: ClassVar[Literal["metadata"]] = "metadata"
    name: str | None = None
    model_type: str | None = None
    base_model: str | None = None
    trained_words: tuple[str, ...] = ()
    sha256: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Progress(_EventBase):
    type: ClassVar[Literal["progress"]] = "progress"
    progress: float  # 0..1; 0 when the size is unknown
    rate: float  # MiB/s
    eta: float | None  # seconds; None when unknown
    downloaded: int
    total: int | None
    connections: int


@dataclass(frozen=True, slots=True)
class Success(_EventBase):
    type: ClassVar[Literal["success"]] = "success"
    path: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Error(_EventBase):
    type: ClassVar[Literal["error"]] = "error"
    message: str
    code: int


@dataclass(frozen=True, slots=True)
class Cancelled(_EventBase):
    type: ClassVar[Literal["cancelled"]] = "cancelled"


Event = Started | Metadata | Progress | Success | Error | Cancelled
