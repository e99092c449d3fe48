"""The backend HTTP API (aiohttp) on its own port.

JSON in and out. Every error is ``{"error": {"code", "message"}}`` with the
status from the error catalogue, produced by one middleware; exception text
from inside the server never reaches the client.

Rooms: :mod:`.app` (the app factory, its middlewares and the one route table),
:mod:`.common` (typed app state, JSON bodies and fields), and the handlers by
resource: :mod:`.topics`, :mod:`.notifications`, :mod:`.users`, :mod:`.tokens`,
:mod:`.ops`. Handlers only translate: the checks are the sessions layer's
:class:`~tidings.sessions.Operations`, shared with the WS and MQTT edges.
"""

from .app import ROUTES, build_app

__all__ = ["ROUTES", "build_app"]
