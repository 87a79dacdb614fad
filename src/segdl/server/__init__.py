"""``segdl serve``: the sd-inference-server download protocol over WebSocket, and a page.

Layers: :mod:`.wire` (crypto and codecs) and :mod:`.messages` (message shapes) are the
protocol; :mod:`.outbox` and :mod:`.downloads` the queue, :mod:`.queuefile` what of it survives
a restart; :mod:`.sessions` (reconnecting clients), :mod:`.uploads` (``chunk``) and
:mod:`.library` (``options``); :mod:`.http`, :mod:`.framelimit` and :mod:`.app` the
connections; :mod:`.cli` the command.
"""

from typing import TYPE_CHECKING, Final

# The password qDiffusion and the protocol's other clients assume (sd-protocol.md).
DEFAULT_PASSWORD: Final = "qDiffusion"

if TYPE_CHECKING:
    from .app import ServerInfo as ServerInfo
    from .app import ServeSettings as ServeSettings
    from .app import serve_segdl as serve_segdl
    from .wire import Scheme as Scheme

_LAZY = {"ServerInfo": "app", "ServeSettings": "app", "serve_segdl": "app", "Scheme": "wire"}


def __getattr__(name: str) -> object:
    # Loaded on first use: ``segdl get`` imports ``segdl.server.cli`` for its argument
    # parser and must not pay for trio-websocket and BSON at every start.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Scheme", "ServeSettings", "ServerInfo", "serve_segdl"]
