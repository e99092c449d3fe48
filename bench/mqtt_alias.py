"""Issue 15: what server-to-client Topic Aliases cost per delivery, in process.

    python bench/mqtt_alias.py                       # 1,000 subscribers, 200 messages, 20 topics
    python bench/mqtt_alias.py --subscribers 5000 --topics 100

A fan-out of QoS 0 messages (``--messages``, round robin over ``--topics``) to
``--subscribers`` connected 5.0 state machines (``tidings.protocol.mqtt.Connection``),
timed three ways, the best of ``--repeat`` rounds each:

- ``fast``: what the transport's fast path does for a client without aliases
  (one shared rendering per message, appended as is);
- ``machine``: the same clients through ``Connection.send_publish`` (what a
  client with a Maximum Packet Size pays);
- ``aliases``: clients with Topic Alias Maximum ``--alias-max`` and
  ``mqtt.topic_aliases`` ``--aliases``, by the transport's fast path for
  them (``Connection.render_qos0``): the LRU pick and the aliased rendering.

It prints microseconds of this process's CPU time per delivery (CPU time, so
that other work on a shared machine counts less), and for ``aliases`` how many distinct
encodings one message needed over all subscribers (1 when every subscriber
saw the topics in the same order, so their alias numbers agree). Nothing here
asserts a figure; bytes stay in memory, no socket is involved (the socket
write is the same in all three).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from tidings.protocol.mqtt import Connack, Connect, Connection, Properties, PublishTemplate, Version
from tidings.protocol.mqtt.codec import encode

V5 = Version.V5


def connected(alias_max: int | None, ours: int) -> Connection:
    conn = Connection(outbound_topic_aliases=ours)
    props = Properties(topic_alias_maximum=alias_max)
    conn.receive_data(encode(Connect("c", V5, properties=props), V5), 0.0)
    conn.events_received()
    conn.send(Connack())
    conn.data_to_send()
    return conn


def run(mode: str, o: argparse.Namespace) -> tuple[float, float]:
    """(µs per delivery, encodings per message) for one round of ``mode``."""
    aliased = mode == "aliases"
    conns = [connected(o.alias_max if aliased else None, o.aliases if aliased else 0)
             for _ in range(o.subscribers)]
    topics = [f"bench/topic/{i}" for i in range(o.topics)]
    payload = b"x" * o.payload
    encodings = 0
    start = time.process_time()
    for i in range(o.messages):
        template = PublishTemplate(topics[i % len(topics)], payload)
        if mode == "fast":
            for _ in conns:
                out = template.render(V5)
                del out
        elif aliased:
            for conn in conns:
                out = conn.render_qos0(template, False)
                del out
        else:
            for conn in conns:
                conn.send_publish(template)
                conn.data_to_send()
        encodings += max(1, len(template._cache))  # renders kept: one per variant
    elapsed = time.process_time() - start
    return elapsed / (o.messages * o.subscribers) * 1e6, encodings / o.messages


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--topics", type=int, default=20)
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--alias-max", type=int, default=10, help="the clients' Topic Alias Maximum")
    p.add_argument("--aliases", type=int, default=32, help="mqtt.topic_aliases")
    p.add_argument("--repeat", type=int, default=3)
    o = p.parse_args(argv)
    print(f"{o.subscribers} subscribers, {o.messages} messages over {o.topics} topics, "
          f"{o.payload}-byte payload, alias maximum {o.alias_max}, mqtt.topic_aliases "
          f"{o.aliases}")
    for mode in ("fast", "machine", "aliases"):
        best = min((run(mode, o) for _ in range(max(1, o.repeat))), key=lambda r: r[0])
        print(f"  {mode:8s} {best[0]:7.3f} µs/delivery   {best[1]:5.2f} encodings/message")


if __name__ == "__main__":
    main()
