"""Connection plumbing, written once for every edge, the node, the bus and presence.

What sits between a transport and the code that decides what to do with it:

* :class:`Outbox` (with :class:`Flusher`, :class:`Sink` and :class:`WriteGate`): a
  connection's outbound bytes, bounded, written with one call per loop pass; a
  connection over its bound is a slow consumer, counted and handed to its edge's
  close path. Bursts the server chooses (retained messages, a resumed queue) are
  paced by the transport's flow control, so the bound only ever sees live traffic.
* :class:`Pump`: a connection's inbound items, handled in order by one worker task
  that exists only while there is work; reading pauses while too many wait.
* :class:`TaskSet`: the background tasks one object owns, spawned, tracked,
  cancelled and awaited when it closes.
* :class:`ConnectionSet`: the open connections of a listener, with an event set
  when the last one closes, so a shutdown waits for it instead of polling.
* :class:`Deadlines`: many connections' deadlines (token expiry) on one timer.
* :class:`InOrder`: answers to pipelined requests, sent in the requests' order
  whenever their work ends.

Nothing here knows a protocol: an edge says where bytes go (a :class:`Sink`) and
where reading pauses (a :class:`Reader`, e.g. an ``asyncio.Transport``).

Rules for changing this module: nothing here blocks except a coroutine that says
what it waits for, and every such wait is bounded or ends when the connection
does; closes are idempotent; a callback into an edge (``on_overflow``, ``done``) is
made once per event and may re-enter the object that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar, cast

from .metrics import Metrics

__all__ = ["PACE_CHUNK", "ConnectionSet", "Deadlines", "Flushable", "Flusher", "InOrder",
           "Outbox", "OverflowSink", "Pump", "PumpOwner", "Reader", "Sink", "TaskSet",
           "TransportSink", "WriteGate", "failed"]

log = logging.getLogger("tidings.plumbing")

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
C = TypeVar("C", bound=Hashable)

PACE_CHUNK = 65536  # bytes of a paced burst queued before waiting for the transport
_CANCEL_WAIT = 5.0  # seconds a closing TaskSet waits for cancelled tasks to end


# -- outbound ---------------------------------------------------------------------------


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """Coalesces writes: each dirty buffer is flushed once per loop iteration.

    ``mark`` is called by a buffer the first time it gets data after a flush;
    one ``call_soon`` per iteration then flushes every marked buffer, so a
    burst of messages to one connection costs one write system call.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._dirty: list[Flushable] = []

    def mark(self, buf: Flushable) -> None:
        if not self._dirty:
            (self._loop or asyncio.get_running_loop()).call_soon(self._run)
        self._dirty.append(buf)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        for buf in dirty:
            buf.flush()


class Sink(Protocol):
    """Where an :class:`Outbox` writes: a transport, a WebSocket, a compressor."""

    def writable(self) -> bool:
        """False once the connection is closing: queued bytes are then dropped."""

    def buffered(self) -> int:
        """Bytes written earlier that the transport has not sent yet."""

    def write(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` in order (one flush's worth; never empty)."""


class OverflowSink(Sink, Protocol):
    """A :class:`Sink` that is also the owner of its :class:`Outbox`: told of an
    overflow by a method call, so the outbox holds no per-connection callback."""

    def on_overflow(self) -> None:
        """The slow-consumer close (the outbox has counted it)."""


class TransportSink:
    """A :class:`Sink` straight onto an asyncio transport (one ``writelines`` a flush)."""

    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport

    def writable(self) -> bool:
        return not self.transport.is_closing()

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def write(self, chunks: list[bytes]) -> None:
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        else:
            self.transport.writelines(chunks)


class WriteGate:
    """A transport's flow control (``pause_writing`` / ``resume_writing``) to await.

    The ``asyncio.Protocol`` that owns the transport calls :meth:`pause` from its
    ``pause_writing`` (the transport's buffer passed its high-water mark) and
    :meth:`resume` from ``resume_writing`` and from ``connection_lost``, so no one
    waits for a connection that is gone. :meth:`wait` returns at once while open.
    """

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    @property
    def paused(self) -> bool:
        return self._waiter is not None

    def pause(self) -> None:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()

    def resume(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once the transport has room (now, if it has). Cancelling one
        waiter leaves the others waiting."""
        waiter = self._waiter
        if waiter is not None:
            await asyncio.shield(waiter)


class Outbox:
    """One connection's outbound bytes: bounded, written once per loop pass.

    * :meth:`append` never blocks or raises. Bytes are written in order, with
      one ``sink.write`` per loop pass (the :class:`Flusher`), so a burst of
      messages to one connection costs one system call.
    * The bound, ``limit`` bytes, counts what is queued here plus what the
      transport still holds: the queue on every append (cheap, the hot path),
      the transport once per flush. Over it, the connection is a slow consumer:
      the queue is dropped, ``tidings_slow_consumers_total`` counted, the outbox
      closes and ``on_overflow()`` is called, once. That is the edge's close path
      (a 4008 close, an MQTT abort); no other connection waits. Without an
      ``on_overflow``, the sink is the owner (an :class:`OverflowSink`) and its
      ``on_overflow()`` is called: one bound method less per connection.
    * :meth:`close` writes what is queued and drops whatever comes after, so
      nothing follows a close frame or a DISCONNECT. Bytes are also dropped
      while ``sink.writable()`` is False.
    * Pacing: a sender of a burst the server chose awaits :meth:`pace` (or
      :meth:`drained`) between messages; it then goes no faster than the client
      reads, and the bound only ever sees live traffic. :meth:`room` says whether
      the link is less than half full, for senders that hold messages back
      instead (``on_flush`` is called after each write, to send more of them).
    """

    __slots__ = ("_chunks", "_closed", "_dirty", "_flusher", "_metrics", "_on_flush",
                 "_on_overflow", "_size", "gate", "limit", "sink")

    def __init__(self, sink: Sink, limit: int, flusher: Flusher, metrics: Metrics,
                 on_overflow: Callable[[], None] | None = None, *,
                 gate: WriteGate | None = None,
                 on_flush: Callable[[], None] | None = None) -> None:
        self.sink, self.limit = sink, limit
        self._flusher, self._metrics = flusher, metrics
        self._on_overflow, self._on_flush = on_overflow, on_flush
        # the transport's flow control; may be set later (when a link is attached)
        self.gate = gate
        # made by the first append after a flush: an idle connection holds no list
        self._chunks: list[bytes] | None = None
        self._size = 0
        self._dirty = self._closed = False

    @property
    def size(self) -> int:
        """Bytes queued here, not yet handed to the transport."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, data: bytes) -> None:
        """Queue ``data`` for the next pass's write (the hot path)."""
        if self._closed:
            return
        chunks = self._chunks
        if chunks is None:
            self._chunks = [data]
        else:
            chunks.append(data)
        self._size += len(data)
        if self._size > self.limit:
            self.overflow()
        elif not self._dirty:
            self._dirty = True
            self._flusher.mark(self)

    def flush(self) -> None:
        """Write everything queued since the last pass with one ``sink.write``."""
        self._dirty = False
        chunks = self._chunks
        if not chunks:
            return
        size = self._size
        self._chunks = None
        self._size = 0
        if self._closed or not self.sink.writable():
            return
        if size + self.sink.buffered() > self.limit:
            self.overflow()
            return
        self.sink.write(chunks)
        if self._on_flush is not None:
            self._on_flush()

    def room(self) -> bool:
        """Whether queue and transport together hold less than half the bound."""
        return self._size + self.sink.buffered() < self.limit // 2

    def close(self) -> None:
        """Write what is queued now; drop everything appended later. Idempotent."""
        if self._closed:
            return
        if self._dirty:
            self.flush()
        self._closed = True

    async def drained(self) -> None:
        """Write what is queued now, then return once the transport is below its
        low-water mark, or the connection is gone (at once without a gate)."""
        if self._dirty:
            self.flush()
        if self.gate is not None:
            await self.gate.wait()

    async def pace(self, chunk: int = PACE_CHUNK) -> None:
        """:meth:`drained` once ``chunk`` bytes are queued; else return at once."""
        if self._size >= chunk:
            await self.drained()

    def overflow(self) -> None:
        """The slow-consumer path: drop what is queued, count it, close, and call
        ``on_overflow`` (once). Public for an owner that finds the connection over
        its bound elsewhere (e.g. messages held while a burst is paced)."""
        if self._closed:
            return
        self._chunks = None
        self._size = 0
        self._closed = True
        self._metrics.inc("tidings_slow_consumers_total")
        if self._on_overflow is not None:
            self._on_overflow()
        else:
            cast(OverflowSink, self.sink).on_overflow()


# -- inbound ----------------------------------------------------------------------------


class Reader(Protocol):
    """Where a :class:`Pump` pauses reading (an ``asyncio.Transport`` is one)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class PumpOwner(Protocol[T_contra]):
    """The object a :class:`Pump` works for, given instead of its callbacks: the
    pump then holds one reference, not a bound method per callback per connection."""

    async def pump_item(self, item: T_contra) -> None:
        """Handle one item (as ``handle``)."""

    async def pump_idle(self) -> None:
        """The queue ran empty (as ``idle``)."""


class Pump(Generic[T]):
    """Inbound items handled in order by one worker task that exists only while
    there is work, so an idle connection costs no task.

    * :meth:`put` never blocks. Items are handed to ``handle`` one at a time, in
      the order put; ``handle`` may put more (they queue behind).
    * When more than ``high`` items wait, ``reader.pause_reading()`` is called
      (once) and the peer is held at the socket; the worker calls
      ``resume_reading()`` when at most ``low`` (default ``high // 2``) wait.
      :meth:`pause` pauses now, whatever the depth (e.g. while a CONNECT is
      answered); the worker resumes it the same way.
    * When the queue runs empty, ``idle()`` (if given) is awaited before the
      worker ends, e.g. for pipelined work still in flight; items put meanwhile
      are handled by the same worker, never left waiting.
    * ``done()`` (if given) is called each time the worker ends, however it ends.
    * An exception escaping ``handle`` is our bug: logged at ERROR, the queue is
      dropped and the worker ends. ``handle`` maps the errors it expects itself.
    * :meth:`clear` drops what waits (the connection is closing); :meth:`cancel`
      also cancels the worker (the connection is gone).
    * With ``tasks``, the worker is spawned in that :class:`TaskSet`, so a
      shutdown can await every connection's worker at once.
    * With ``owner`` (a :class:`PumpOwner`) instead of ``handle`` and ``idle``,
      its ``pump_item`` and ``pump_idle`` are called: an idle connection then
      holds no bound-method callbacks.
    """

    __slots__ = ("_done", "_handle", "_high", "_idle", "_low", "_owner", "_paused", "_queue",
                 "_reader", "_task", "_tasks")

    def __init__(self, handle: Callable[[T], Awaitable[None]] | None, reader: Reader | None, *,
                 high: int, low: int | None = None,
                 idle: Callable[[], Awaitable[None]] | None = None,
                 done: Callable[[], None] | None = None,
                 tasks: TaskSet | None = None, owner: PumpOwner[T] | None = None) -> None:
        if (handle is None) == (owner is None):
            raise ValueError("a Pump takes either handle or owner")
        self._handle = handle
        self._owner = owner
        self._reader = reader
        self._high = high
        self._low = high // 2 if low is None else low
        self._idle = idle
        self._done = done
        self._tasks = tasks  # where the worker is tracked (e.g. to await it at shutdown)
        # made by the first put and dropped when the worker ends: an idle
        # connection holds no deque (about 760 bytes) either
        self._queue: deque[T] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False

    def __len__(self) -> int:
        """Items waiting (not counting one being handled)."""
        return 0 if self._queue is None else len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether the worker exists (an item is handled or waits)."""
        return self._task is not None

    @property
    def paused(self) -> bool:
        return self._paused

    def put(self, item: T) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)
        if len(queue) > self._high:
            self.pause()
        if self._task is None:
            self._start()

    def pause(self) -> None:
        """Stop reading until the worker has brought the queue down to ``low``."""
        if not self._paused and self._reader is not None:
            self._paused = True
            self._reader.pause_reading()

    def clear(self) -> None:
        if self._queue is not None:
            self._queue.clear()

    def cancel(self) -> None:
        self.clear()
        if self._task is not None:
            self._task.cancel()

    def _start(self) -> None:
        coro = self._work()
        if self._tasks is not None:
            task = self._tasks.spawn(coro)
        else:
            task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._reap)
        self._task = task

    def _reap(self, task: asyncio.Task[None]) -> None:
        """A worker cancelled before it ran never reached its ``finally``: end it here."""
        if self._task is task:
            self._ended()
            if self._queue:
                self._start()  # put after the cancel: handled, not stuck

    def _ended(self) -> None:
        self._task = None
        if not self._queue:
            self._queue = None
        if self._done is not None:
            self._done()

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None  # made by the put that started this worker
        handle: Callable[[T], Awaitable[None]]
        idle: Callable[[], Awaitable[None]] | None
        owner = self._owner
        if owner is not None:  # bound for this worker's life only
            handle, idle = owner.pump_item, owner.pump_idle
        else:
            assert self._handle is not None
            handle, idle = self._handle, self._idle
        try:
            while True:
                while queue:
                    item = queue.popleft()
                    try:
                        await handle(item)
                    except Exception:
                        log.exception("an inbound handler failed; %d queued items dropped",
                                      len(queue))
                        queue.clear()
                    if self._paused and len(queue) <= self._low:
                        self._paused = False
                        assert self._reader is not None
                        self._reader.resume_reading()
                if idle is not None:
                    try:
                        await idle()
                    except Exception:
                        log.exception("an inbound idle step failed")
                if not queue:
                    return
        finally:
            self._ended()


# -- tasks and connections --------------------------------------------------------------


class TaskSet:
    """The background tasks one object owns.

    * :meth:`spawn` starts a task and holds it until it ends (the event loop
      itself keeps only a weak reference).
    * A task that ends with an exception other than cancellation is our bug:
      logged at ERROR with its traceback, so it is never lost.
    * :meth:`wait` lets the tasks end by themselves; :meth:`close` waits up to
      ``grace`` seconds the same way, then cancels the rest and awaits them.
      After :meth:`close`, no task of the set runs (unless one ignored its
      cancellation, which is logged).
      Closing is idempotent; a set may spawn again after it.
    """

    __slots__ = ("_name", "_tasks")

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a background task failed", self._name, exc_info=task.exception())

    def cancel(self) -> None:
        """Cancel every task without waiting (from a synchronous close path)."""
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Wait for every task (and those they spawn meanwhile) to end by itself.
        Unbounded: bound it with ``asyncio.timeout`` (the tasks are not cancelled)."""
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(pending)

    async def close(self, grace: float = 0.0) -> None:
        """Let the tasks finish for up to ``grace`` seconds, then cancel and await the
        rest (at most ``_CANCEL_WAIT`` seconds: a task that ignores cancellation is
        our bug, logged, not a shutdown that hangs)."""
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.wait()
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=_CANCEL_WAIT)
            if stuck:
                log.error("%s: %d tasks ignored their cancellation", self._name, len(stuck))


class ConnectionSet(Generic[C]):
    """The open connections of a listener, with an event set while there are none.

    A shutdown closes each connection, then awaits :meth:`wait_empty` under an
    ``asyncio.timeout``: it returns when the last ``discard`` happens, not at the
    next poll.
    """

    __slots__ = ("_empty", "_items")

    def __init__(self) -> None:
        self._items: set[C] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[C]:
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def add(self, conn: C) -> None:
        self._items.add(conn)
        self._empty.clear()

    def discard(self, conn: C) -> None:
        self._items.discard(conn)
        if not self._items:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once no connection is open (at once if none is). Unbounded: bound
        it with ``asyncio.timeout``."""
        await self._empty.wait()


# -- time -------------------------------------------------------------------------------


class Deadlines(Generic[C]):
    """Many deadlines on one loop timer: each connection's token expiry, without a
    ``TimerHandle`` per connection (about 0.5 KiB each while idle).

    Deadlines are wall-clock seconds (a token's ``exp``) grouped by the whole
    second they round up to, so connections whose tokens end in the same second
    share one entry, and ``fire(key)`` runs at or after the deadline, never
    before it: at most a second late for a fractional one, on time for the whole
    seconds a JWT ``exp`` holds. The caller keeps the deadline it added (to
    :meth:`discard` it); the wheel keeps a key only until it fires or is discarded.
    ``fire`` may discard or add keys.
    """

    __slots__ = ("_buckets", "_clock", "_fire", "_heap", "_timer", "_timer_at")

    def __init__(self, fire: Callable[[C], None],
                 clock: Callable[[], float] = time.time) -> None:
        self._fire = fire
        self._clock = clock
        self._buckets: dict[int, dict[C, None]] = {}  # second -> keys (insertion order)
        self._heap: list[int] = []  # the seconds of _buckets
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._buckets.values())

    def add(self, key: C, at: float) -> None:
        """Call ``fire(key)`` once the wall clock reaches ``at``."""
        second = math.ceil(at)
        keys = self._buckets.get(second)
        if keys is None:
            keys = self._buckets[second] = {}
            heapq.heappush(self._heap, second)
        keys[key] = None
        if self._timer is None or second < self._timer_at:
            self._arm()

    def discard(self, key: C, at: float) -> None:
        """Forget ``key``'s deadline ``at`` (the value given to :meth:`add`); no-op if
        it fired already."""
        keys = self._buckets.get(math.ceil(at))
        if keys is not None:
            keys.pop(key, None)  # an empty bucket goes when its second comes

    def close(self) -> None:
        """Cancel the timer and forget every deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._heap.clear()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            return
        self._timer_at = self._heap[0]
        delay = max(0.0, self._timer_at - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        now = self._clock()
        while self._heap and self._heap[0] <= now:
            second = self._heap[0]
            keys = self._buckets[second]
            while keys:  # a key that fire() discards meanwhile is not fired
                key = next(iter(keys))
                del keys[key]
                try:
                    self._fire(key)
                except Exception:  # our bug: the other deadlines still fire
                    log.exception("a deadline's callback failed")
            del self._buckets[second]
            heapq.heappop(self._heap)
        self._arm()  # also when the loop's clock ran ahead of the wall clock


# -- answers in order ---------------------------------------------------------------------


Answer = Callable[["asyncio.Future[Any]"], None]


class InOrder:
    """Answers to requests read in order, sent in that order however their work ends.

    An edge that reads many requests at once (a client pipelining publishes)
    starts the work of each without waiting (e.g. submits the publish to the
    node's next group) and :meth:`add` its future with the function that
    answers it. Each answer is called once its future and every earlier one
    are done, so replies (WS replies, PUBACKs) keep the order of the requests,
    and none is sent before its own work ended.

    * Every future's outcome is retrieved, even one whose answer was dropped.
    * :meth:`wait` returns once at most ``most`` answers wait: a later
      request that must see the earlier ones done (or a bound on how many may
      be in flight) waits here.
    * :meth:`drop` forgets what waits (the connection is gone); the work goes
      on, its answers are not called.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        # made by the first add and dropped when empty: an idle connection holds none
        self._queue: deque[tuple[asyncio.Future[Any], Answer]] | None = None

    def __len__(self) -> int:
        """Answers not yet sent."""
        return 0 if self._queue is None else len(self._queue)

    def add(self, future: asyncio.Future[Any], answer: Answer) -> None:
        """Answer ``future`` with ``answer(future)`` after every earlier one."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((future, answer))
        future.add_done_callback(self._settle)

    def _settle(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved, so a dropped answer's error is not logged as lost
        queue = self._queue
        while queue and queue[0][0].done():
            future, answer = queue.popleft()
            answer(future)
        if not queue:
            self._queue = None

    async def wait(self, most: int = 0) -> None:
        """Return once at most ``most`` answers wait (0: every answer was sent)."""
        while self._queue is not None and len(self._queue) > most:
            head = self._queue[0][0]
            await asyncio.wait([head])
            self._settle(head)  # its callback may not have run yet: answer it now

    def drop(self) -> None:
        self._queue = None


def failed(error: BaseException) -> asyncio.Future[Any]:
    """A future that already failed with ``error`` (a request refused before its
    work began, answered in its turn through :class:`InOrder`)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
