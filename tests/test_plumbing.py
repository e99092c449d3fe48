"""Connection plumbing (tidings.plumbing) over real sockets.

Each outbox and pump here drives a real asyncio transport on a socketpair, the
other end read (or not read) by a real stream reader; the task and connection
sets run real tasks and real TCP connections on loopback. Nothing is faked. The
transport scenarios run again on uvloop, the loop ``tidings serve`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from conftest import WAIT
from support.mqtt import wait_until
from tidings.metrics import Metrics
from tidings.plumbing import (
    PACE_CHUNK,
    ConnectionSet,
    Deadlines,
    Flusher,
    Outbox,
    Pump,
    TaskSet,
    TransportSink,
    WriteGate,
)

SMALL_BUFFER = 4096  # kernel socket buffers, so a peer that stops reading is felt at once


class Driver(asyncio.Protocol):
    """The server side of a pair: hands the transport's flow control to a gate,
    as an edge's protocol does."""

    def __init__(self) -> None:
        self.gate = WriteGate()
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.gate.pause()

    def resume_writing(self) -> None:
        self.gate.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.resume()  # no one waits for a connection that is gone
        if not self.lost.done():
            self.lost.set_result(None)


class CountingSink(TransportSink):
    """The transport sink, counting its write calls (the system calls a pass costs)."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        super().__init__(transport)
        self.writes = 0

    def write(self, chunks: list[bytes]) -> None:
        self.writes += 1
        super().write(chunks)


@dataclass
class Pair:
    transport: asyncio.Transport
    driver: Driver
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sink: CountingSink
    metrics: Metrics = field(default_factory=Metrics)
    overflows: int = 0

    def outbox(self, limit: int) -> Outbox:
        def overflow() -> None:
            self.overflows += 1
            self.transport.abort()  # the edge's close path

        return Outbox(self.sink, limit, Flusher(), self.metrics, overflow,
                      gate=self.driver.gate)


@contextlib.asynccontextmanager
async def open_pair() -> AsyncIterator[Pair]:
    """A real transport driven by :class:`Driver`, and a stream reading its peer."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    loop = asyncio.get_running_loop()
    transport, driver = await loop.create_connection(Driver, sock=ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        yield Pair(transport, driver, reader, writer, CountingSink(transport))
    finally:
        transport.abort()
        writer.close()


async def next_pass() -> None:
    """Return after the callbacks already scheduled on the loop (the flusher's) ran."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


# -- Outbox -----------------------------------------------------------------------------


async def test_a_burst_in_one_pass_is_one_write_in_order() -> None:
    async with open_pair() as pair:
        outbox = pair.outbox(1 << 20)
        chunks = [f"message {i};".encode() for i in range(200)]
        for chunk in chunks:
            outbox.append(chunk)
        expected = b"".join(chunks)
        got = await asyncio.wait_for(pair.reader.readexactly(len(expected)), WAIT)
        assert got == expected
        assert pair.sink.writes == 1
        assert outbox.size == 0


async def test_over_the_bound_on_append_closes_once_and_drops_the_rest() -> None:
    async with open_pair() as pair:
        outbox = pair.outbox(1000)
        outbox.append(b"x" * 600)
        outbox.append(b"y" * 600)  # 1200 queued > 1000
        outbox.append(b"z" * 10)  # after the overflow: dropped
        await next_pass()
        assert pair.overflows == 1
        assert pair.metrics.get("tidings_slow_consumers_total") == 1
        assert outbox.closed and outbox.size == 0
        assert pair.sink.writes == 0
        await asyncio.wait_for(pair.driver.lost, WAIT)
        assert await asyncio.wait_for(pair.reader.read(), WAIT) == b""  # not a byte went out


async def test_an_owner_over_its_bound_elsewhere_takes_the_same_close_path_once() -> None:
    """A session holding live messages while it paces a burst is over the bound
    outside the outbox: ``overflow()`` drops the queue, counts and closes once."""
    async with open_pair() as pair:
        outbox = pair.outbox(1000)
        outbox.append(b"q" * 100)  # queued, not yet written: dropped, not sent
        outbox.overflow()
        outbox.overflow()  # idempotent: one count, one close
        outbox.append(b"z" * 10)
        await next_pass()
        assert pair.overflows == 1
        assert pair.metrics.get("tidings_slow_consumers_total") == 1
        assert outbox.closed and outbox.size == 0
        await asyncio.wait_for(pair.driver.lost, WAIT)
        assert await asyncio.wait_for(pair.reader.read(), WAIT) == b""


async def test_a_peer_that_stops_reading_is_a_slow_consumer() -> None:
    """Each pass queues far less than the bound; what the transport holds counts too."""
    async with open_pair() as pair:
        limit = 256 * 1024
        outbox = pair.outbox(limit)
        passes = 0
        while pair.overflows == 0 and passes < 200:  # bounded: 200 x 16 KiB = 3.2 MiB at most
            outbox.append(b"m" * 16384)
            await next_pass()
            passes += 1
        assert pair.overflows == 1, "a peer that reads nothing was never cut off"
        assert pair.metrics.get("tidings_slow_consumers_total") == 1
        # cut off near the bound (plus what the kernel's socket buffers absorbed)
        assert passes <= 2 * limit // 16384


async def test_close_writes_what_is_queued_and_nothing_after() -> None:
    async with open_pair() as pair:
        outbox = pair.outbox(1 << 20)
        outbox.append(b"goodbye")
        outbox.close()  # e.g. the close frame was queued last
        outbox.append(b"after the close")
        outbox.close()  # idempotent
        await next_pass()
        pair.transport.close()
        assert await asyncio.wait_for(pair.reader.read(), WAIT) == b"goodbye"
        assert pair.overflows == 0


async def test_a_paced_burst_goes_as_fast_as_the_peer_reads() -> None:
    """A server-chosen burst (e.g. retained messages) far over the bound never
    trips it: the sender waits for the transport to drain between chunks."""
    async with open_pair() as pair:
        limit = 512 * 1024
        outbox = pair.outbox(limit)
        message = b"r" * 4096
        count = 1024  # 4 MiB: eight times the bound
        high = 0

        async def burst() -> None:
            nonlocal high
            for _ in range(count):
                outbox.append(message)
                high = max(high, outbox.size + pair.sink.buffered())
                await outbox.pace()

        sender = asyncio.create_task(burst())
        await wait_until(lambda: pair.driver.gate.paused, what="the transport to push back")
        await wait_until(lambda: pair.sink.buffered() > 0 and not outbox.size,
                         what="the sender to wait with nothing queued")
        assert not sender.done()
        got = await asyncio.wait_for(pair.reader.readexactly(len(message) * count), WAIT)
        await asyncio.wait_for(sender, WAIT)
        assert got == message * count
        assert pair.overflows == 0
        assert high < limit // 2  # the paced burst used a fraction of the bound
        assert high >= PACE_CHUNK  # and did fill a chunk before each wait


async def test_a_paced_sender_wakes_when_the_connection_is_lost() -> None:
    async with open_pair() as pair:
        outbox = pair.outbox(64 << 20)
        for _ in range(200):  # bounded: 200 x 64 KiB
            outbox.append(b"p" * 65536)
            outbox.flush()
            if pair.driver.gate.paused:
                break
        assert pair.driver.gate.paused
        waiter = asyncio.create_task(outbox.drained())
        await next_pass()
        assert not waiter.done()
        pair.transport.abort()
        await asyncio.wait_for(waiter, WAIT)


async def test_room_says_whether_less_than_half_the_bound_is_used() -> None:
    async with open_pair() as pair:
        outbox = pair.outbox(1000)
        outbox.append(b"a" * 499)
        assert outbox.room()
        outbox.append(b"a")
        assert not outbox.room()


# -- Pump -------------------------------------------------------------------------------


class Recorder:
    """A handler that records what it handled and which task handled it."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.workers: set[asyncio.Task[object] | None] = set()
        self.running = 0
        self.most = 0
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self, item: int) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.workers.add(asyncio.current_task())
        try:
            await self.go.wait()
            await asyncio.sleep(0)
            self.items.append(item)
        finally:
            self.running -= 1


async def test_items_are_handled_in_order_one_at_a_time_by_one_worker() -> None:
    handle = Recorder()
    pump: Pump[int] = Pump(handle, None, high=1000)
    assert not pump.busy  # an idle pump holds no task
    for i in range(100):
        pump.put(i)
    await wait_until(lambda: len(handle.items) == 100, what="every item")
    assert handle.items == list(range(100))
    assert handle.most == 1
    assert len(handle.workers) == 1
    await wait_until(lambda: not pump.busy, what="the worker to end")


async def test_reading_pauses_over_high_and_resumes_at_low() -> None:
    async with open_pair() as pair:
        handle = Recorder()
        handle.go.clear()
        depth_at_resume: list[int] = []

        class Reading:
            def pause_reading(self) -> None:
                pair.transport.pause_reading()

            def resume_reading(self) -> None:
                depth_at_resume.append(len(pump))
                pair.transport.resume_reading()

        pump: Pump[int] = Pump(handle, Reading(), high=8, low=2)
        for i in range(8):
            pump.put(i)
        assert pair.transport.is_reading()
        pump.put(8)  # nine waiting: over high
        assert not pair.transport.is_reading() and pump.paused
        handle.go.set()
        await wait_until(pair.transport.is_reading, what="reading to resume")
        assert depth_at_resume == [2]
        await wait_until(lambda: len(handle.items) == 9, what="every item")


async def test_pause_holds_reading_until_the_worker_caught_up() -> None:
    """E.g. while a CONNECT is answered: what follows it waits in the socket."""
    async with open_pair() as pair:
        handle = Recorder()
        pump: Pump[int] = Pump(handle, pair.transport, high=100)
        pump.put(1)
        pump.pause()
        assert not pair.transport.is_reading()
        await wait_until(pair.transport.is_reading, what="reading to resume")
        assert handle.items == [1]


async def test_the_idle_step_runs_before_the_worker_ends_and_keeps_it_for_new_items() -> None:
    handle = Recorder()
    in_idle = asyncio.Event()
    leave_idle = asyncio.Event()
    idles = 0

    async def idle() -> None:  # e.g. pipelined publishes still in flight
        nonlocal idles
        idles += 1
        in_idle.set()
        await leave_idle.wait()

    pump: Pump[int] = Pump(handle, None, high=10, idle=idle)
    pump.put(1)
    await asyncio.wait_for(in_idle.wait(), WAIT)
    pump.put(2)  # arrives while the worker waits in its idle step
    leave_idle.set()
    await wait_until(lambda: not pump.busy, what="the worker to end")
    assert handle.items == [1, 2]  # not left waiting for a next put
    assert len(handle.workers) == 1 and idles == 2


async def test_a_handler_bug_is_logged_and_the_pump_still_works(
        caplog: pytest.LogCaptureFixture) -> None:
    handled: list[int] = []

    async def handle(item: int) -> None:
        if item == 1:
            raise RuntimeError("a bug")
        handled.append(item)

    ended = 0

    def done() -> None:
        nonlocal ended
        ended += 1

    pump: Pump[int] = Pump(handle, None, high=10, done=done)
    with caplog.at_level(logging.ERROR, logger="tidings.plumbing"):
        for i in (0, 1, 2, 3):
            pump.put(i)
        await wait_until(lambda: ended == 1, what="the worker to end")
    assert handled == [0]  # what waited behind the bug was dropped
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    pump.put(4)
    await wait_until(lambda: ended == 2, what="a new worker to end")
    assert handled == [0, 4]


async def test_cancel_stops_the_worker_and_calls_done() -> None:
    handle = Recorder()
    handle.go.clear()  # the handler waits for ever
    ended = asyncio.Event()
    pump: Pump[int] = Pump(handle, None, high=10, done=ended.set)
    pump.put(1)
    pump.put(2)
    await wait_until(lambda: handle.running == 1, what="the handler to start")
    pump.cancel()
    await asyncio.wait_for(ended.wait(), WAIT)
    assert not pump.busy and len(pump) == 0 and handle.items == []


async def test_a_worker_cancelled_before_it_ran_leaves_the_pump_usable() -> None:
    handle = Recorder()
    ended = 0

    def done() -> None:
        nonlocal ended
        ended += 1

    pump: Pump[int] = Pump(handle, None, high=10, done=done)
    pump.put(1)
    pump.cancel()  # in the same pass: the worker task never started
    await wait_until(lambda: ended == 1, what="the cancelled worker to end")
    assert not pump.busy and handle.items == []
    pump.put(2)
    await wait_until(lambda: handle.items == [2], what="a new worker")


# -- TaskSet ------------------------------------------------------------------------------


async def test_close_lets_quick_tasks_finish_and_cancels_the_rest() -> None:
    tasks = TaskSet("test")
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        finished.set()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.spawn(quick())
    stuck = tasks.spawn(forever())
    assert len(tasks) == 2
    await tasks.close(grace=WAIT / 10)
    assert finished.is_set() and cancelled.is_set() and stuck.cancelled()
    assert len(tasks) == 0
    await tasks.close()  # idempotent


async def test_wait_is_bounded_by_the_caller_and_cancels_nothing() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    task = tasks.spawn(release.wait())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(WAIT / 50):
            await tasks.wait()
    assert not task.done()
    release.set()
    await asyncio.wait_for(tasks.wait(), WAIT)
    assert task.result() is True and len(tasks) == 0


async def test_a_failed_task_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("the sweeper")

    async def broken() -> None:
        raise ValueError("a bug")

    with caplog.at_level(logging.ERROR, logger="tidings.plumbing"):
        tasks.spawn(broken())
        await asyncio.wait_for(tasks.wait(), WAIT)
        await next_pass()  # the done callback runs in the pass after the task ended
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "the sweeper" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


# -- ConnectionSet ------------------------------------------------------------------------


async def test_wait_empty_returns_when_the_last_real_connection_closes() -> None:
    connections: ConnectionSet[asyncio.Protocol] = ConnectionSet()

    class Tracked(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            connections.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.discard(self)

    await asyncio.wait_for(connections.wait_empty(), WAIT)  # none yet: at once
    server = await asyncio.get_running_loop().create_server(Tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await wait_until(lambda: len(connections) == 3, what="three connections")
    emptied = asyncio.create_task(connections.wait_empty())
    for _, writer in clients[:2]:
        writer.close()
    await wait_until(lambda: len(connections) == 1, what="two to close")
    await next_pass()
    assert not emptied.done()
    clients[2][1].close()
    await asyncio.wait_for(emptied, WAIT)
    assert len(connections) == 0
    server.close()
    await server.wait_closed()


# -- on uvloop (what ``tidings serve`` runs) ------------------------------------------------


@pytest.mark.parametrize("scenario", [
    test_a_burst_in_one_pass_is_one_write_in_order,
    test_a_peer_that_stops_reading_is_a_slow_consumer,
    test_a_paced_burst_goes_as_fast_as_the_peer_reads,
    test_a_paced_sender_wakes_when_the_connection_is_lost,
    test_reading_pauses_over_high_and_resumes_at_low,
], ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_transport_scenarios_on_uvloop(
        scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(scenario())


# -- owner forms: no per-connection callbacks --------------------------------------------


class OwningSink(CountingSink):
    """A sink that owns its outbox, as an edge's connection does: told of an
    overflow by ``on_overflow`` instead of a callback given to the outbox."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self.overflows = 0

    def on_overflow(self) -> None:
        self.overflows += 1
        self.transport.abort()


async def test_an_owning_sink_is_told_of_an_overflow_once_and_holds_no_list_idle() -> None:
    async with open_pair() as pair:
        sink = OwningSink(pair.transport)
        outbox = Outbox(sink, 100, Flusher(), pair.metrics, gate=pair.driver.gate)
        outbox.append(b"a" * 10)
        await next_pass()
        assert await asyncio.wait_for(pair.reader.readexactly(10), WAIT) == b"a" * 10
        outbox.append(b"b" * 101)  # over the bound
        outbox.overflow()  # again, from the owner's own check: still once
        assert sink.overflows == 1
        assert pair.metrics.get("tidings_slow_consumers_total") == 1
        assert outbox.closed and outbox.size == 0


class Owner:
    """A pump's owner: its methods are the handler and the idle step."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.idles = 0

    async def pump_item(self, item: int) -> None:
        await asyncio.sleep(0)
        self.items.append(item)

    async def pump_idle(self) -> None:
        self.idles += 1


async def test_a_pump_with_an_owner_calls_its_methods_in_order() -> None:
    owner = Owner()
    pump: Pump[int] = Pump(None, None, high=1000, owner=owner)
    for i in range(50):
        pump.put(i)
    await wait_until(lambda: not pump.busy, what="the worker to end")
    assert owner.items == list(range(50))
    assert owner.idles == 1
    with pytest.raises(ValueError):
        Pump(None, None, high=10)  # neither handle nor owner


# -- Deadlines --------------------------------------------------------------------------


class WallClock:
    """A fake wall clock for :class:`Deadlines` (the loop's own timer stays real)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_deadlines_fire_on_their_second_never_before_and_not_when_discarded() -> None:
    """Keys whose deadlines round up to one second share it; each fires once the
    wall clock reaches that second, a discarded one never, a later one not early."""
    clock = WallClock(1000.95)
    fired: list[str] = []
    wheel: Deadlines[str] = Deadlines(fired.append, clock)
    wheel.add("a", 1000.96)
    wheel.add("b", 1000.99)
    wheel.add("late", 1001.2)
    wheel.discard("b", 1000.99)
    assert len(wheel) == 2
    await asyncio.sleep(0)
    assert fired == []  # the wall clock has not reached 1001
    clock.now = 1001.0
    await wait_until(lambda: fired == ["a"], what="the first second's key")
    assert "late" not in fired and len(wheel) == 1
    clock.now = 1002.0
    await wait_until(lambda: fired == ["a", "late"], what="the next second's key")
    assert len(wheel) == 0


async def test_deadlines_a_fired_key_may_discard_its_neighbours() -> None:
    """fire() may discard keys of the same second (a close that ends others): those
    are not fired after all; and a deadline already past fires at once."""
    clock = WallClock(500.0)
    fired: list[int] = []

    def fire(k: int) -> None:
        fired.append(k)
        wheel.discard(k + 1, 499.5)

    wheel: Deadlines[int] = Deadlines(fire, clock)
    for k in range(4):
        wheel.add(k, 499.5)
    await wait_until(lambda: len(fired) == 2, what="the past deadlines")
    assert fired == [0, 2]
    wheel.close()
    assert len(wheel) == 0


async def test_deadlines_a_failing_callback_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = WallClock(700.0)
    fired: list[int] = []

    def fire(k: int) -> None:
        fired.append(k)
        if k == 0:
            raise RuntimeError("bug")

    wheel: Deadlines[int] = Deadlines(fire, clock)
    wheel.add(0, 699.0)
    wheel.add(1, 699.0)
    await wait_until(lambda: fired == [0, 1], what="both deadlines")
    assert "a deadline's callback failed" in caplog.text
    wheel.add(2, 699.5)  # the wheel still runs
    await wait_until(lambda: fired == [0, 1, 2], what="a later deadline")
