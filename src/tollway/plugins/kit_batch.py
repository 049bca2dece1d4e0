"""The batch processor: how every plugin that ships data off the request path sends it.

APISIX's ``utils/batch-processor.lua`` and ``batch-processor-manager.lua``, per worker:

* a plugin has one :class:`BatchManager`; it keeps one :class:`BatchProcessor` per conf (a new
  route version gets a new one; an idle one is forgotten once its last batch is done);
* with ``batch_max_size: 1`` every entry is sent at once, alone;
* otherwise a batch leaves when ``batch_max_size`` entries are buffered, or at a check made every
  ``inactive_timeout`` seconds (from the first buffered entry) once no entry came for
  ``inactive_timeout`` seconds or the oldest is ``buffer_duration`` seconds old;
* a failed send (``OSError``/``ValueError``) is retried after ``retry_delay`` seconds up to
  ``max_retry_count`` times, then the batch is dropped; a :class:`PartialFailure` says the first
  entries went through, and only the rest are retried;
* at most ``max_pending_entries`` entries (plugin metadata, APISIX's default 8192) wait per
  plugin, buffered or being sent: more are dropped and counted (``dropped``), with a warning at
  most once a second. Memory stays bounded when a receiver is slow or dead.

Pushing is synchronous and cheap (an append, maybe a timer or a task): the log phase never
waits. Every send is a tracked task; ``aclose`` flushes the buffers and gives the sends
``grace`` seconds to finish, as a graceful stop must not lose what was buffered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from msgspec import Meta

from tollway.ratelog import RateLimitedLog

log = logging.getLogger("tollway.plugins")

DEFAULT_MAX_PENDING_ENTRIES = 8192  # APISIX batch-processor-manager
E = TypeVar("E")
Sender = Callable[[list[Any]], Awaitable[None]]
# Turns the queued items into what is sent, once per batch, in the sending task: the log phase
# queues what the request already has (its context) and the entries are built off the request
# path.
Preparer = Callable[[list[Any]], list[Any]]


class BatchConf(msgspec.Struct, kw_only=True):
    """APISIX's batch-processor fields, mixed into each plugin's conf (``name`` is overridden
    with the plugin's default, as ``wrap_schema`` does)."""

    name: str = "log buffer"
    batch_max_size: Annotated[int, Meta(ge=1)] = 1000
    inactive_timeout: Annotated[int, Meta(ge=1)] = 5
    buffer_duration: Annotated[int, Meta(ge=1)] = 60
    max_retry_count: Annotated[int, Meta(ge=0)] = 0
    retry_delay: Annotated[int, Meta(ge=0)] = 1


class BatchSettings(msgspec.Struct, frozen=True):
    """The same fields as plain numbers, for plugins whose settings are not a BatchConf
    (opentelemetry's ``batch_span_processor``, file-logger's fixed flush)."""

    name: str
    batch_max_size: int = 1000
    inactive_timeout: float = 5
    buffer_duration: float = 60
    max_retry_count: int = 0
    retry_delay: float = 1

    @classmethod
    def of(cls, conf: BatchConf) -> BatchSettings:
        return cls(
            conf.name,
            conf.batch_max_size,
            conf.inactive_timeout,
            conf.buffer_duration,
            conf.max_retry_count,
            conf.retry_delay,
        )


class PartialFailure(Exception):
    """Raised by a sender when the first ``sent`` entries of the batch went through."""

    def __init__(self, sent: int, reason: str) -> None:
        super().__init__(reason)
        self.sent = sent


class BatchBuffer(Generic[E]):
    """The buffer and timer decisions, pure; the clock is passed in."""

    __slots__ = ("batch_max_size", "buffer_duration", "entries", "first_t", "inactive", "last_t")

    def __init__(self, batch_max_size: int, inactive_timeout: float, buffer_duration: float):
        self.batch_max_size = batch_max_size
        self.inactive = inactive_timeout
        self.buffer_duration = buffer_duration
        self.entries: list[E] = []
        self.first_t = 0.0
        self.last_t = 0.0

    def push(self, entry: E, now: float) -> list[E] | None:
        """The batch to send now, if this entry completes one."""
        if self.batch_max_size == 1:
            return [entry]
        self.entries.append(entry)
        if len(self.entries) == 1:
            self.first_t = now
        self.last_t = now
        if len(self.entries) >= self.batch_max_size:
            return self.take()
        return None

    def due(self, now: float) -> bool:
        """At a timer check: flush now (and stop the timer) rather than check again later."""
        return now - self.last_t >= self.inactive or now - self.first_t >= self.buffer_duration

    def take(self) -> list[E]:
        batch, self.entries = self.entries, []
        return batch


class BatchProcessor:
    """One conf's buffer in one worker: its timer and the tasks sending its batches."""

    def __init__(
        self,
        key: Any,
        settings: BatchSettings,
        send: Sender,
        owner: BatchManager,
        prepare: Preparer | None = None,
    ) -> None:
        self.key = key  # the conf object this processor serves (identity)
        self.settings = settings
        self.buffer: BatchBuffer[Any] = BatchBuffer(
            settings.batch_max_size, settings.inactive_timeout, settings.buffer_duration
        )
        self.send = send
        self.prepare = prepare
        self.owner = owner
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def push(self, entry: Any) -> None:
        batch = self.buffer.push(entry, time.monotonic())
        if batch:
            self._dispatch(batch)
        if self.settings.batch_max_size > 1 and self.timer is None and self.buffer.entries:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.settings.inactive_timeout, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.buffer.due(time.monotonic()):
            self.flush()
            if not self.tasks:
                self.owner.forget(self)
            return
        self._arm()

    def flush(self) -> None:
        batch = self.buffer.take()
        if batch:
            self._dispatch(batch)

    def _dispatch(self, batch: list[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks and self.timer is None and not self.buffer.entries:
            self.owner.forget(self)

    async def _run(self, batch: list[Any]) -> None:
        s = self.settings
        warn = self.owner.warn
        left = len(batch)
        try:
            if self.prepare is not None:
                try:
                    batch = self.prepare(batch)
                except Exception:
                    log.exception("Batch Processor[%s] failed to build entries", s.name)
                    self.owner.dropped += left
                    return
            for attempt in range(s.max_retry_count + 1):
                try:
                    await self.send(batch)
                    self.owner.sent += len(batch)
                    return
                except PartialFailure as e:
                    # APISIX: entries before first_fail were consumed; retry only the rest.
                    warn(
                        logging.WARNING,
                        "Batch Processor[%s] failed to process entries [%d/%d]: %s",
                        s.name,
                        len(batch) - e.sent,
                        len(batch),
                        e,
                    )
                    self.owner.sent += e.sent
                    self.owner.pending -= e.sent
                    left -= e.sent
                    batch = batch[e.sent :]
                except (OSError, ValueError) as e:
                    warn(
                        logging.WARNING,
                        "Batch Processor[%s] failed to process entries: %s",
                        s.name,
                        e or type(e).__name__,
                    )
                if attempt < s.max_retry_count:
                    await asyncio.sleep(s.retry_delay)
            self.owner.dropped += len(batch)
            warn(
                logging.WARNING,
                "Batch Processor[%s] exceeded the max_retry_count[%d] dropping the entries",
                s.name,
                s.max_retry_count + 1,
            )
        finally:
            self.owner.pending -= left

    async def aclose(self, grace: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()
        tasks = list(self.tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


Starter = Callable[[Any], tuple[BatchSettings, Sender, Preparer | None]]


class BatchManager:
    """One plugin's processors in one worker, with the plugin's backlog limit and counters."""

    def __init__(self, plugin_name: str, logger: logging.Logger | None = None) -> None:
        self.plugin_name = plugin_name
        self.processors: dict[int, BatchProcessor] = {}
        self.max_pending = DEFAULT_MAX_PENDING_ENTRIES
        self.pending = 0  # buffered or being sent
        self.dropped = 0  # over the backlog limit, or after the last retry
        self.sent = 0
        self.warn = RateLimitedLog(logger or log)
        self._discard_warned = 0.0

    def full(self) -> bool:
        """True (and the entry is counted as dropped) when the backlog is at its limit: check
        before building an entry, so an outage costs no per-request work."""
        if self.pending < self.max_pending:
            return False
        self.dropped += 1
        now = time.monotonic()
        if now - self._discard_warned >= 1.0:  # APISIX: a summary at most once a second
            self._discard_warned = now
            log.warning(
                "%s: max pending entries limit exceeded, discarding entries (pending: %d, "
                "max_pending_entries: %d, dropped so far: %d)",
                self.plugin_name,
                self.pending,
                self.max_pending,
                self.dropped,
            )
        return True

    def push(self, key: Any, entry: Any, start: Starter) -> None:
        """Queue ``entry`` on ``key``'s processor (``start(key)`` gives its settings, sender and
        preparer the first time). Call ``full()`` first."""
        proc = self.processors.get(id(key))
        if proc is None or proc.key is not key:
            settings, send, prepare = start(key)
            proc = self.processors[id(key)] = BatchProcessor(key, settings, send, self, prepare)
        self.pending += 1
        proc.push(entry)

    def forget(self, proc: BatchProcessor) -> None:
        if self.processors.get(id(proc.key)) is proc:
            del self.processors[id(proc.key)]

    async def aclose(self, grace: float) -> None:
        procs = list(self.processors.values())
        self.processors.clear()
        await asyncio.gather(*(p.aclose(grace) for p in procs))
