"""EtcdSource: one full load, then one watch on the whole prefix (APISIX config_etcd.lua, §1.2).

Invariants: ``run()`` raises nothing but CancelledError; the sink gets each change once, in
revision order, after the full load it builds on; while etcd is away the sink is not touched, so
the last good config keeps serving. Recovery: compaction or a wiped etcd → full reload; a broken
or frozen connection → backoff with jitter, cut short as soon as etcd answers again (a probe, or
any request through the same client), then re-watch from the last applied revision + 1.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tollway.config.etcd import EtcdClient, Watch, WatchResponse
from tollway.config.source import ConfigSink, ConfigSource, KeyValue
from tollway.errors import EtcdCompacted, EtcdError, EtcdUnavailable
from tollway.ratelog import RateLimitedLog

__all__ = ["EtcdSource", "backoff_delay"]

log = logging.getLogger("tollway.config")

StartupFailureCallback = Callable[[], object]  # may return an awaitable


def backoff_delay(
    failures: int, initial: float, factor: float, cap: float, rand: Callable[[], float]
) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""
    step = min(cap, initial * factor ** max(0, failures))
    return step / 2 + rand() * step / 2


class EtcdSource(ConfigSource):
    """Feeds a ConfigSink from etcd. Status for metrics and the control API: ``revision`` (last
    applied), ``etcd_revision`` (latest store revision seen: lag = etcd_revision - revision),
    ``connected``, ``last_error``, ``reloads`` (full loads after the first one), ``watches``."""

    # Connection-error backoff (seconds); attributes so tests and operators can lower them.
    backoff_initial = 0.2
    backoff_factor = 2.0
    backoff_max = 8.0
    # While etcd is away, a tiny read this often (each bounded by probe_timeout) ends the
    # backoff as soon as etcd answers again: recovery within about a second of etcd's return,
    # however long the outage (the backoff alone could leave an instance 8 s behind).
    recovery_probe_interval = 0.25
    # A full range read that races a compaction is retried at once this many times.
    compacted_retries = 3

    def __init__(
        self,
        client: EtcdClient,
        prefix: str = "/apisix",
        *,
        watch_timeout: float | None = 50,
        resync_delay: float = 5,
        health_check_timeout: float | None = None,
        startup_retry: int = 2,
        health_check_interval: float | None = 2.0,
        probe_timeout: float = 2.0,
        on_startup_failure: StartupFailureCallback | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """Parameters:

        - ``watch_timeout``: re-open a watch that was silent this long (APISIX does the same).
        - ``resync_delay``: wait after an error etcd answered with (auth, permission...), plus
          up to 50 % jitter, as APISIX. Connection errors use the exponential backoff instead.
        - ``health_check_timeout``: if given, becomes the client's ``fail_timeout`` (APISIX: how
          long a failed endpoint is avoided).
        - ``health_check_interval`` / ``probe_timeout``: while watching, a one-key range runs
          this often with this timeout, so a frozen etcd (no answer, no error) is noticed
          within a few seconds. None or 0: no probe.
        - ``on_startup_failure``: called once when the first ``startup_retry`` loads failed
          (e.g. to serve from the disk snapshot); the source keeps retrying regardless.
        """
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.watch_timeout = watch_timeout
        self.resync_delay = resync_delay if resync_delay >= 0 else 5.0
        self.startup_retry = max(1, startup_retry)
        self.health_check_interval = health_check_interval
        self.probe_timeout = probe_timeout
        self.on_startup_failure = on_startup_failure
        self._rand = rand
        if health_check_timeout is not None:
            client.fail_timeout = health_check_timeout
        # status
        self.revision = 0
        self.etcd_revision = 0
        self.connected = False
        self.last_error: str | None = None
        self.reloads = 0
        self.watches = 0  # watch streams opened (re-opened after errors or watch_timeout)
        self.endpoint: str | None = None  # the etcd member the watch runs on
        self.loaded = False
        # bookkeeping
        self._failures = 0
        self._startup_failures = 0
        self._startup_failure_reported = False
        self._log = RateLimitedLog(log, 30.0)

    @property
    def watched_prefix(self) -> str:
        return self.prefix + "/"

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, sink: ConfigSink) -> None:
        need_load = True
        while True:
            try:
                if need_load:
                    await self._full_load(sink)
                    need_load = False
                need_load = await self._watch(sink)
            except asyncio.CancelledError:
                raise
            except EtcdError as e:
                await self._after_error(e)
            except Exception as e:  # a bug in a sink, say: start again from a full load
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("etcd config source: unexpected error, full reload follows")
                need_load = True
                await asyncio.sleep(self._resync_wait())

    async def _full_load(self, sink: ConfigSink) -> None:
        t0 = time.perf_counter()
        # The collector paused from the read through the validation (issue #17): the read builds
        # a row per key (100k: ~400k new objects, in a thread for gRPC), which young and full
        # collections walked again and again as they piled up; the snapshot's read is paused
        # alike. The Agent freezes what the load keeps before the collector is on again.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for attempt in range(self.compacted_retries):
                try:
                    revision, rows = await self.client.range_rows(self.watched_prefix)
                    break
                except EtcdCompacted:  # compacted between two pages: read at a new revision
                    if attempt + 1 == self.compacted_retries:
                        raise
            read_ms = (time.perf_counter() - t0) * 1e3
            # The supervisor's Agent takes rows as they are (no object per key: issue #17).
            load_rows = getattr(sink, "load_rows", None)
            if load_rows is not None:
                load_rows(revision, rows)
            else:
                sink.load(revision, [KeyValue(*row) for row in rows])
        finally:
            if was_enabled:
                gc.enable()
        if self.loaded:
            self.reloads += 1
        self.loaded = True
        self.revision = revision
        self.etcd_revision = revision
        # Not rate-limited: full loads are rare (start-up, compaction, a wiped etcd).
        log.info(
            "etcd: loaded %d keys at revision %d (read in %.0f ms)", len(rows), revision, read_ms
        )
        self._mark_connected()

    async def _watch(self, sink: ConfigSink) -> bool:
        """Watch until something breaks. True: a full reload is needed; False: just re-watch.
        Raises EtcdError on connection trouble (the caller backs off)."""
        watch = self.client.watch(
            self.watched_prefix, self.revision + 1, idle_timeout=self.watch_timeout
        )
        self.watches += 1
        consumer = asyncio.create_task(self._consume(watch, sink), name="etcd-watch")
        tasks: set[asyncio.Task[Any]] = {consumer}
        if self.health_check_interval:
            interval = self.health_check_interval
            tasks.add(asyncio.create_task(self._probe(watch, interval), name="etcd-probe"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                return consumer.result()
            for prober in done:
                prober.result()  # raises the probe's EtcdUnavailable
            return False  # the client moved to another endpoint: follow it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await watch.aclose()

    async def _consume(self, watch: Watch, sink: ConfigSink) -> bool:
        created = False
        async for resp in watch:
            if resp.revision:
                self.etcd_revision = resp.revision
            if resp.created:
                created = True
                self._mark_connected()
                self._note_endpoint(watch.endpoint)
                if resp.revision < self.revision:
                    # etcd.md §4: a wiped/recreated etcd accepts a watch from a future revision
                    # and stays silent; its header revision is the tell.
                    self._log(
                        logging.WARNING,
                        "etcd: revision went back from %d to %d "
                        "(etcd wiped or restored?): full reload",
                        self.revision,
                        resp.revision,
                    )
                    return True
            if resp.canceled or resp.compact_revision:
                if resp.compact_revision:
                    self._log(
                        logging.INFO,
                        "etcd: revision %d compacted (at %d): full reload",
                        self.revision + 1,
                        resp.compact_revision,
                    )
                    return True
                raise EtcdError(f"etcd canceled the watch: {resp.cancel_reason or 'no reason'}")
            if resp.events:
                self._apply(sink, resp)
            elif not resp.created and resp.revision > self.revision:
                # Progress notification: every event up to here has been delivered.
                self.revision = resp.revision
        if not created:
            raise EtcdUnavailable("etcd watch stream ended before the watch was created")
        if not watch.timed_out:
            raise EtcdUnavailable("etcd closed the watch stream")
        return False  # quiet for watch_timeout: re-watch from the same revision

    def _apply(self, sink: ConfigSink, resp: WatchResponse) -> None:
        # The header revision may run ahead of these events (a catching-up watcher gets events
        # in batches), so the revision to resume from is the last event's, never the header's.
        top = self.revision
        changes: list[KeyValue] = []
        for ev in resp.events:
            kv = ev.kv
            if kv.mod_revision <= self.revision:
                continue  # already applied (APISIX ignores events at or below prev_index)
            value = kv.value if ev.type != "DELETE" else None
            changes.append(KeyValue(kv.key, value, kv.mod_revision, kv.create_revision))
            top = max(top, kv.mod_revision)
        if changes:
            sink.apply(top, changes)
            self.revision = top

    def _note_endpoint(self, endpoint: str | None) -> None:
        """Say once when the watch moves to another member (that member's events are as good:
        every member holds the same log; the move means the previous one failed us)."""
        if endpoint is None or endpoint == self.endpoint:
            return
        if self.endpoint is None:
            log.info("etcd: watching %s on %s", self.watched_prefix, endpoint)
        else:
            log.warning("etcd: the watch moved from %s to %s", self.endpoint, endpoint)
        self.endpoint = endpoint

    async def _probe(self, watch: Watch, interval: float) -> None:
        """Returns when the client switched endpoints; raises EtcdUnavailable when etcd does not
        answer a tiny read in time. Either way the watch is torn down by the caller."""
        while True:
            await asyncio.sleep(interval)
            try:
                res = await self.client.range(
                    self.prefix, keys_only=True, timeout=self.probe_timeout
                )
            except EtcdUnavailable:
                raise
            except EtcdError:
                continue  # it answered: alive (e.g. a permission error on the probe key)
            self.etcd_revision = res.revision
            if watch.endpoint is not None and self.client.endpoint != watch.endpoint:
                return

    # -- errors -------------------------------------------------------------------------------

    def _mark_connected(self) -> None:
        if not self.connected and self.last_error is not None:
            self._log(logging.INFO, "etcd: connection restored at revision %d", self.revision)
        self.connected = True
        self.last_error = None
        self._failures = 0

    async def _after_error(self, e: EtcdError) -> None:
        self.connected = False
        self.last_error = str(e)
        self._log(logging.WARNING, "etcd: %s", e)
        if not self.loaded:
            self._startup_failures += 1
            if self._startup_failures >= self.startup_retry:
                await self._report_startup_failure()
        if isinstance(e, EtcdUnavailable):
            delay = backoff_delay(
                self._failures,
                self.backoff_initial,
                self.backoff_factor,
                self.backoff_max,
                self._rand,
            )
            self._failures += 1
            await self._backoff(delay)
        else:
            await asyncio.sleep(self._resync_wait())

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` s, or less: until a request through the client is answered (the
        Admin API wrote through it, or the recovery probe got through)."""
        tasks = {
            asyncio.create_task(asyncio.sleep(delay)),
            asyncio.create_task(self.client.wait_answer()),
            asyncio.create_task(self._probe_until_answered()),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe_until_answered(self) -> None:
        while True:
            await asyncio.sleep(self.recovery_probe_interval)
            try:
                await self.client.range(self.prefix, keys_only=True, timeout=self.probe_timeout)
            except EtcdUnavailable:
                continue
            except EtcdError:
                return  # it answered (e.g. a permission error on the probe key): alive
            return

    def _resync_wait(self) -> float:
        # APISIX: resync_delay + rand() * 0.5 * resync_delay for errors that are not timeouts.
        return self.resync_delay + self._rand() * 0.5 * self.resync_delay

    async def _report_startup_failure(self) -> None:
        if self._startup_failure_reported or self.on_startup_failure is None:
            return
        self._startup_failure_reported = True
        log.warning("etcd: initial load failed %d times; still retrying", self._startup_failures)
        try:
            result = self.on_startup_failure()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("etcd: on_startup_failure callback failed")
