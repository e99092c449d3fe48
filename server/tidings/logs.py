"""The logging policy, and the handler set-up that enforces it for ``tidings serve``.

One line per event that matters to whoever runs the node:

* **INFO**: lifecycle. The node is up (with its ports), shutting down,
  stopped; a backend connected.
* **WARNING**: a peer that misbehaves in a way worth knowing (a slow
  consumer closed, a bus gap history could not fill), and a backend that
  recovered ("store: writes work again"). Garbage input is summarised, below.
* **ERROR**: our own bugs, with a traceback (a handler that raised), and a
  backend that cannot do its job ("store: cannot write"), logged once when
  that starts, not once per failed request (``health.py``).
* **DEBUG**: per-connection detail, off by default. The libraries' own
  per-connection chatter goes here: ``websockets`` ("connection open",
  "connection closed", "connection rejected") and ``aiohttp`` (access and
  per-request lines) are demoted to DEBUG by :class:`PolicyFilter`, so a
  connection storm does not write one line per connection.

Garbage input (HTTP requests the aiohttp parser refuses, MQTT protocol
violations) is never a traceback and never one line per connection: the
first of each kind within ``node.log_summary_interval`` seconds is one
WARNING line with its reason, the rest are counted and reported in one line
when the interval is over ("garbage HTTP request on the API port: 299 more
in the last 60 s"). 300 garbage
connections to the API port once wrote 64 MB of ERROR tracebacks.

Never logged: tokens, API keys, secrets, payloads, the raw bytes of a
refused request (only the parser's first line of complaint).

``node.log_format = "json"`` writes one JSON object per line (``ts``,
``level``, ``logger``, ``message``, ``exc`` for a traceback) for log
collectors; ``"text"`` (the default) a plain line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from .config import NodeSettings

__all__ = ["GarbageLog", "JsonFormatter", "PolicyFilter", "configure", "garbage"]

log = logging.getLogger("tidings.garbage")

_LIBRARIES = ("websockets", "aiohttp")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. (orjson is already a dependency; the format is
    five fields, so no logging library is needed for it.)"""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


@dataclass
class _Window:
    started: float
    count: int = 0  # seen after the first, not logged yet
    last: str = ""


class GarbageLog:
    """Rate-limited WARNINGs for garbage input: per kind, the first one in each
    interval is logged with its reason, the rest are counted and reported in
    one line by the first one after the interval."""

    def __init__(self, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def note(self, kind: str, peer: str, reason: str) -> None:
        """``kind`` names what and where (e.g. "HTTP request on the API port")."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None and now - window.started < self.interval:
            window.count += 1
            window.last = reason
            return
        if window is not None and window.count:
            log.warning("garbage %s: %d more in the last %.0f s (the last: %s)",
                        kind, window.count, now - window.started, window.last)
        self._windows[kind] = _Window(now)
        log.warning("garbage %s from %s: %s (more within %.0f s are counted, not logged)",
                    kind, peer, reason, self.interval)


garbage = GarbageLog()  # the node's; configure() sets its interval


class PolicyFilter(logging.Filter):
    """On the handler: demote the libraries' chatter to DEBUG, and turn their
    garbage-input errors into :data:`garbage` notes instead of tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_LIBRARIES):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = str(record.args[0]) if isinstance(record.args, tuple) and record.args \
                else "a client"
            # the first line only: later ones quote the raw request (maybe a key)
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0][:120]
            garbage.note("HTTP request on the API port", peer, reason.rstrip(":"))
            return False
        if record.levelno >= logging.WARNING:
            return True  # not chatter: maybe a bug, keep it
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure(settings: NodeSettings) -> None:
    """Logging for ``tidings serve``: level, format, the policy filter, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json"
                         else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(PolicyFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    garbage.interval = settings.log_summary_interval
