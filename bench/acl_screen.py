"""Per-message cost of ACL by delivery in the hub (issue 15): a ``#`` subscription
that reaches into a deny rule vs one that overlaps no deny.

    python bench/acl_screen.py [--sessions N] [--messages M] [--repeat R]

Builds a real node (SQLite store in a temporary folder, memory bus) and N real
WS-layer sessions (:class:`tidings.sessions.Session`, connected anonymously,
subscribed through ``Session.subscribe``) under ``config/open-broker.toml``'s
rules (deny ``test/nosubscribe``, allow ``#``), with a transport that drops
what it is handed. It then times ``Hub.deliver`` of M publications, best of R
rounds, for:

* ``home/#``   (overlaps no deny: the hub does not ask the session),
* ``#``        (reaches into the deny: each message is screened),
* ``#`` with messages on ``test/nosubscribe`` itself (screened and refused,
  each refusal counted in ``tidings_acl_denied_messages_total``).

and prints nanoseconds per (message x subscriber). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tidings import config
from tidings.auth import Acl, TokenAuthority
from tidings.bus.memory import MemoryBus
from tidings.errors import TidingsError
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.notify import Notifier
from tidings.presence import Presence
from tidings.protocol.frames import Encoding
from tidings.sessions import Operations, Session
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication, format_offset

OPEN_BROKER = Path(__file__).resolve().parents[1] / "config" / "open-broker.toml"
WIRE = "bench"


class Drop:
    """A transport that takes everything and keeps nothing (the hub's cost alone)."""

    encoding = Encoding.JSON
    closing = False
    bound = 1 << 30

    def deliver(self, publication: Publication | None, data: Any) -> None:
        pass

    def send(self, obj: dict[str, Any]) -> None:
        pass

    async def pace(self) -> bool:
        return False

    def overflow(self) -> None:
        pass

    def end(self, error: TidingsError) -> None:
        pass


def ignore(fields: dict[str, Any]) -> None:
    pass


SCENARIOS = (("home/#", "home/kitchen/temp"), ("#", "home/kitchen/temp"),
             ("#", "test/nosubscribe"))


async def setup(tmp: Path, flt: str, sessions: int) -> tuple[Node, Presence, list[Session]]:
    """A node of its own (so scenarios do not share a hub) with ``sessions``
    anonymous sessions subscribed to ``flt``."""
    settings = config.load(OPEN_BROKER, {"TIDINGS_STORE_PATH": str(tmp)})
    metrics = Metrics()
    node = Node("bench", SqliteStore(tmp / "data"), MemoryBus(), settings.history, metrics)
    node.hub.register_wire(WIRE, lambda p: b"x", edge="bench")
    await node.start()
    tokens = TokenAuthority("bench-secret-" + "x" * 40, max_ttl=3600, default_ttl=600)
    presence = Presence("bench", settings.presence, metrics)
    ops = Operations(settings, node, tokens, Acl(settings.acl),
                     Notifier(node, settings.notify), presence, metrics)
    subs = []
    for _ in range(sessions):
        s = Session(ops, Drop(), WIRE, edge="bench", max_subscriptions=8)
        await s.connect(None, None, None, ignore)
        await s.subscribe(flt, None, ignore)
        subs.append(s)
    return node, presence, subs


async def run(sessions: int, messages: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        setups = [await setup(Path(tmp) / str(i), flt, sessions)
                  for i, (flt, _) in enumerate(SCENARIOS)]
        try:
            best = [float("inf")] * len(SCENARIOS)
            for _ in range(repeat):  # rounds interleaved: a busy moment hits every scenario
                for i, ((_, topic), (node, _, _)) in enumerate(zip(SCENARIOS, setups,
                                                                  strict=True)):
                    pubs = [Publication(topic, format_offset("e", k + 1), b"1",
                                        PayloadKind.JSON, k) for k in range(messages)]
                    start = time.perf_counter()
                    for p in pubs:
                        node.hub.deliver(p)
                    best[i] = min(best[i], time.perf_counter() - start)
            print(f"{sessions} subscribers, {messages} messages, best of {repeat} rounds")
            for (flt, topic), (_, _, subs), t in zip(SCENARIOS, setups, best, strict=True):
                restricted = sum(s.restricted for s in subs)
                print(f"  {flt:7} on {topic:18} restricted {restricted:5}/{sessions}: "
                      f"{t / (messages * sessions) * 1e9:6.1f} ns per message x subscriber")
        finally:
            for node, presence, subs in setups:
                for s in subs:
                    await s.close()
                await presence.close()
                await node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.sessions, args.messages, args.repeat))


if __name__ == "__main__":
    main()
