"""The engine seam: one ``transfer`` for native, single and aria2c, and their registry.

The download flow opens the target (:mod:`.target`), emits ``Started``, asks an engine to
fill the target, and finishes it.  An engine only moves bytes: it never decides whether a
partial is resumed, never verifies the finished file unless it does so anyway (aria2c), and
never learns which site a URL came from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..core.events import Event
from ..errors import DownloadError
from ..io.dataplane import Transform
from ..io.remote import ProbeResult
from .options import Options
from .target import Target
from .throttle import RateLimit

if TYPE_CHECKING:
    from .warm import WarmStart

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EventSink",
    "Renew",
    "Transfer",
    "TransferResult",
    "get_engine",
]

EventSink = Callable[[Event], None]
# Asks the site again for the file: a fresh signed URL, probed and checked to be the same file
# (raises a DownloadError, RemoteChanged when it is another file).
Renew = Callable[[], Awaitable[ProbeResult]]


@dataclass(frozen=True, slots=True)
class Transfer:
    """One engine run: the file (its probe and mirrors) into an opened, unfinished target.

    ``limits``: rate limits every connection passes (``options.max_download_limit`` comes on
    top); ``transform`` rewrites each chunk in place before it is written (MEGA decryption);
    ``renew`` gets a fresh link when the primary URL is a site's signed link that expired
    (None: a URL the user gave, never renewed).
    ``warm``: the download's first response and connections opened ahead (:mod:`.warm`), for
    the native engine to adopt (other engines leave it; the flow closes what is left).
    """

    probe: ProbeResult
    target: Target
    options: Options
    emit: EventSink
    mirrors: tuple[ProbeResult, ...] = ()
    limits: tuple[RateLimit, ...] = ()
    transform: Transform | None = None
    renew: Renew | None = None
    warm: WarmStart | None = None


@dataclass(frozen=True, slots=True)
class TransferResult:
    checksum_verified: bool = False  # the engine checked ``options.checksum`` itself
    duplicate_bytes: int = 0  # received twice in the endgame (the loser's, never written)


class Engine(Protocol):
    """Fills a target.  Raises a :class:`~segdl.errors.DownloadError` on failure, leaving the
    partial resumable; on cancellation it stops at once, state saved."""

    name: str

    def check(self, transfer_needs_transform: bool) -> None:
        """Refuse, with one clear line, a download this engine cannot do (not installed,
        or chunks must be rewritten in flight)."""
        ...

    async def transfer(self, job: Transfer) -> TransferResult: ...


ENGINE_NAMES = ("native", "single", "aria2c")


def get_engine(name: str) -> Engine:
    """The engine called *name*.

    Raises:
        DownloadError: no engine has that name.
    """
    if name == "native":
        from .native import NativeEngine

        return NativeEngine()
    if name == "single":
        from .native import NativeEngine

        return NativeEngine(single=True)
    if name == "aria2c":
        # Imported only when asked for: it pulls in trio-websocket, which a native download
        # does not need at start-up.
        from .aria2c import Aria2cEngine

        return Aria2cEngine()
    raise DownloadError(f"unknown engine {name!r}: choose native, single or aria2c")
