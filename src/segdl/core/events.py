"""Typed download events: what the library callback, ``--json`` and the server send.

The fields and the wire ``type`` values are the contract in DESIGN.md "Events".  ``to_dict()``
gives the wire form: ``{"type": "progress", "progress": 0.5, …}``.  The class names say they
are events: a failure is :class:`Failed` (wire type ``error``) and a stop is :class:`Aborted`
(wire type ``cancelled``), so nobody writes ``except segdl.Error`` expecting an exception.
The old names ``Error`` and ``Cancelled`` still work, with a DeprecationWarning, for one release.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

__all__ = [
    "Aborted",
    "Event",
    "Failed",
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
class Failed(_EventBase):
    type: ClassVar[Literal["error"]] = "error"
    message: str
    code: int


@dataclass(frozen=True, slots=True)
class Aborted(_EventBase):
    type: ClassVar[Literal["cancelled"]] = "cancelled"


Event = Started | Metadata | Progress | Success | Failed | Aborted

_DEPRECATED = {"Error": Failed, "Cancelled": Aborted}


def deprecated_name(module: str, name: str) -> type[_EventBase]:
    """The event class behind an old name, with a warning (used by this module and segdl)."""
    try:
        cls = _DEPRECATED[name]
    except KeyError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
    warnings.warn(
        f"{module}.{name} is deprecated: the event is now {module}.{cls.__name__}",
        DeprecationWarning,
        stacklevel=3,
    )
    return cls


def __getattr__(name: str) -> type[_EventBase]:
    return deprecated_name(__name__, name)
