"""``$SYS/broker/...``: the broker's statistics, published retained as Mosquitto does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from ...errors import TidingsError
from ...types import classify_payload

if TYPE_CHECKING:
    from .broker import MqttBroker

__all__ = ["VERSION", "sys_loop"]

VERSION = "tidings-0.1"


def sys_stats(broker: MqttBroker) -> dict[str, object]:
    """The values published under ``$SYS/broker/``, by subtopic."""
    return {
        "version": VERSION,
        "uptime": f"{int(time.time() - broker.started)} seconds",
        "clients/connected": len(broker.connections),
        "clients/total": len(broker.sessions),
        "messages/received": broker.metrics.get("tidings_messages_in_total"),
        "messages/sent": broker.frames_out,
        "subscriptions/count": len(broker.node.hub),
    }


async def sys_loop(broker: MqttBroker, interval: float) -> None:
    """Publish :func:`sys_stats` every ``interval`` seconds (``mqtt.sys_interval``);
    a store that cannot take one round skips it."""
    while True:
        for key, value in sys_stats(broker).items():
            data = str(value).encode()
            with contextlib.suppress(TidingsError):
                await broker.node.publish(f"$SYS/broker/{key}", data, classify_payload(data),
                                          retain=True, qos=0)
        await asyncio.sleep(interval)
