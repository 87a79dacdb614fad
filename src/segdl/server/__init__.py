"""``segdl serve``: the sd-inference-server download protocol over WebSocket, and a page.

Layers: :mod:`.wire` (crypto and codecs) and :mod:`.messages` (message shapes) are the
protocol; :mod:`.outbox` and :mod:`.downloads` the queue; :mod:`.http` and :mod:`.app` the
connections; :mod:`.cli` the command.
"""

from .app import ServerInfo as ServerInfo
from .app import ServeSettings as ServeSettings
from .app import serve_segdl as serve_segdl
from .wire import Scheme as Scheme

__all__ = ["Scheme", "ServeSettings", "ServerInfo", "serve_segdl"]
