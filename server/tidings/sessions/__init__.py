"""The session layer: every client operation, once, whatever the transport.

Rooms::

    edges/ws.py, api/http.py, edges/mqtt/   translate wire <-> calls, errors -> codes
            |
    sessions.Session        one client: connect, subscribe (recovery, retained),
            |               publish, inbox, quotas; the hub's subscriber (may_see)
    sessions.Operations     the checks every path shares (topics, '$', ACL, sizes,
            |               inbox paging) in front of the node, notifier and presence
    node.Node / notify.Notifier / presence.Presence
"""

from .operations import Operations
from .session import Reply, Session, Transport, payload_of

__all__ = ["Operations", "Reply", "Session", "Transport", "payload_of"]
