"""The supervisor: owns the instance.

It reads the local config, opens the listening sockets, holds the one config source of the
instance (one etcd watch, not one per worker), validates every item once in its Store, keeps the
last-known-good snapshot on disk, and fans accepted changes out to the workers over IPC. It
starts N workers, restarts one that dies, stops gracefully on SIGTERM/SIGINT and reloads on SIGHUP
(new workers start and load before the old ones drain). Work done once per instance lives here:
the status API, the Admin API, the control API, health checks and DNS (``tollway.upstream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tollway.checks import ItemChecker
from tollway.config.source import ConfigSource, KeyValue
from tollway.config.store import Row, Store
from tollway.config.yaml_source import YamlSource
from tollway.errors import SettingsError
from tollway.instance import SourceStatus, WorkerStatus
from tollway.ipc import (
    TO_SUPERVISOR,
    Ack,
    Apply,
    BadMessage,
    Load,
    Passive,
    Ready,
    ToSupervisor,
    ToWorker,
    encode,
    read_message,
)
from tollway.memory import collector_paused, settle_after_load
from tollway.metrics import MetricsExport
from tollway.plugins.registry import load_registry
from tollway.ratelog import RateLimitedLog
from tollway.settings import LoadedSettings
from tollway.upstream.monitor import UpstreamMonitor

if TYPE_CHECKING:
    from tollway.config.etcd import EtcdClient

log = logging.getLogger("tollway.supervisor")

SNAPSHOT_INTERVAL = 2.0  # seconds between two writes of the last-known-good snapshot
# After the start, the first snapshot waits for the workers to be ready, at most this long.
SNAPSHOT_START_WAIT = 60.0
# A worker that exits within this many seconds of its start counts as a crash loop: its restarts
# back off (0.1 s doubling up to RESPAWN_MAX_DELAY) instead of burning a core on respawns.
CRASH_LOOP_LIFETIME = 10.0
RESPAWN_MAX_DELAY = 5.0


@dataclass
class WorkerHandle:
    generation: int
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    ready: bool = False
    revision: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() at spawn


class Agent:
    """The ConfigSink of the instance: validate once, then fan out accepted changes."""

    def __init__(self, sup: Supervisor, store: Store) -> None:
        self.sup = sup
        self.store = store
        self.from_snapshot = False
        self.loaded = asyncio.Event()

    def load(self, revision: int, kvs: list[KeyValue]) -> None:
        self.load_rows(
            revision, [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]
        )

    def load_rows(
        self,
        revision: int,
        kvs: list[tuple[str, bytes | None, int, int]],
        *,
        from_snapshot: bool = False,
    ) -> None:
        first = not self.loaded.is_set()
        t0 = time.perf_counter()
        # The collector paused from the validation until what it kept is frozen (issue #17): on
        # again before, its next young collection walked every object the load made (100k
        # routes: ~0.2 s of the "sent" step, bench/RESULTS.md).
        with collector_paused():
            self.store.load_rows(revision, kvs)
            t1 = time.perf_counter()
            self.from_snapshot = False
            self.loaded.set()
            self.sup.broadcast(Load.from_rows(revision, self.store.snapshot_rows()))
            # The validated config lives until the next load: out of the collector's sight, so
            # that no full collection walks 100k items again and again (issue #17).
            settle_after_load(first=first)
        # Start-up at scale is measured step by step (bench/scale.py reads this line).
        log.info(
            "config: %d keys at revision %d: validated in %.0f ms, sent to workers in %.0f ms",
            len(kvs),
            revision,
            (t1 - t0) * 1e3,
            (time.perf_counter() - t1) * 1e3,
        )
        self.sup.upstreams_changed(None)
        if not from_snapshot:  # what was just read from disk need not be written back
            self.sup.snapshot_dirty()

    def load_snapshot(self, revision: int, rows: list[tuple[str, bytes | None, int, int]]) -> None:
        self.load_rows(revision, rows, from_snapshot=True)
        self.from_snapshot = True

    def apply(self, revision: int, changes: list[KeyValue]) -> None:
        store = self.store
        store.apply(revision, changes)
        accepted: list[KeyValue] = []
        for kind, item_id, key in store.last_changes:
            item = store[kind].get(item_id)
            if item is None:
                accepted.append(KeyValue(key, None, revision, 0))
            else:
                accepted.append(KeyValue(key, item.raw, item.mod_revision, item.create_revision))
        # Even when every change was rejected, tell workers the revision moved (lag metric).
        self.sup.broadcast(Apply.of(revision, accepted))
        if accepted:
            self.sup.upstreams_changed(store.last_changes)
            self.sup.snapshot_dirty()


def _listen(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"{ip}:{port}: {e.strerror}") from None
    s.listen(4096)
    s.setblocking(False)
    s.set_inheritable(True)
    return s


class Supervisor:
    def __init__(self, settings: LoadedSettings) -> None:
        self.settings = settings
        self.workers: list[WorkerHandle] = []
        self.generation = 0
        self.stopping = False
        self.sockets: list[socket.socket] = []
        self.tls_sockets: list[socket.socket] = []
        registry = load_registry(settings.conf.plugins, settings.plugin_attr)
        self.registry = registry
        self.store = Store(settings.etcd.prefix, ItemChecker.for_store(registry, settings))
        self.agent = Agent(self, self.store)
        self.source: ConfigSource | None = None
        self.etcd_client: EtcdClient | None = None  # set by make_source for an etcd source
        self.tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._snapshot_pending = False
        self._last_snapshot = 0.0
        self._warn = RateLimitedLog(log)
        self._quick_exits = 0  # workers in a row that exited soon after their start
        self.runners: list[Any] = []
        self.started = time.time()
        self.started_mono = time.monotonic()
        # The Prometheus export (tollway.metrics), made in start_metrics; None when disabled.
        self.metrics: MetricsExport | None = None
        # Health checks and DNS, once per instance (tollway.upstream).
        self.upstreams = UpstreamMonitor(
            self.broadcast,
            recover_after=settings.conf.tollway.passive_recovery,
            health_checks=not settings.conf.apisix.disable_upstream_healthcheck,
        )

    def upstreams_changed(self, changes: list[tuple[str, str, str]] | None) -> None:
        """After a full load (None) or applied changes: reconcile health checkers and DNS."""
        if not self.settings.serves_proxy:
            return
        try:
            self.upstreams.sync(self.store, changes)
        except Exception:  # a bug here must not stop config from reaching the workers
            log.exception("health check / DNS reconcile failed")

    # -- sockets ------------------------------------------------------------------------

    def open_sockets(self) -> None:
        if not self.settings.serves_proxy:
            return
        for ip, port in self.settings.listens:
            self.sockets.append(_listen(ip, port))
        for ip, port in self.settings.tls_listens:
            self.tls_sockets.append(_listen(ip, port))

    # -- workers ------------------------------------------------------------------------

    async def spawn_worker(self, generation: int) -> WorkerHandle:
        parent, child = socket.socketpair()
        child.set_inheritable(True)
        fds = [child.fileno()] + [s.fileno() for s in self.sockets + self.tls_sockets]
        cmd = [
            sys.executable,
            "-m",
            "tollway.worker",
            "--config",
            str(self.settings.path),
            "--ipc-fd",
            str(child.fileno()),
            "--listen-fds",
            ",".join(str(s.fileno()) for s in self.sockets),
            "--tls-fds",
            ",".join(str(s.fileno()) for s in self.tls_sockets),
        ]
        # prometheus: workers record into the export's directory (tollway.metrics).
        env = self.metrics.worker_env() if self.metrics is not None else None
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=fds, env=env)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        try:
            reader, writer = await asyncio.open_connection(sock=parent)
            # After the last await: no broadcast can fall between this copy of the config and
            # the worker joining self.workers below.
            greeting = self._greeting()
        except BaseException:
            parent.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        handle = WorkerHandle(generation, proc, writer, started=time.monotonic())
        loop = asyncio.get_running_loop()
        handle.tasks.append(loop.create_task(self._read_worker(handle, reader)))
        handle.tasks.append(loop.create_task(self._watch_worker(handle)))
        self.workers.append(handle)
        writer.write(greeting)
        return handle

    def _greeting(self) -> bytes:
        """What a new worker reads first: DNS answers and health (so its first compile already
        has them), then the config if the instance has one."""
        msgs: list[ToWorker] = list(self.upstreams.greeting())
        no_wait = self.settings.conf.apisix.disable_sync_configuration_during_start
        if not self.store.loaded and no_wait:
            # APISIX's flag: do not hold start-up for the first sync; serve (404s) until it lands.
            msgs.append(Load.from_rows(0, []))
        elif self.store.loaded:
            msgs.append(Load.from_rows(self.store.revision, self.store.snapshot_rows()))
        return b"".join(encode(msg) for msg in msgs)

    async def _read_worker(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> None:
        """Readiness, acks and passive health reports from one worker. A frame that cannot be
        read ends the stream (nothing after it can be trusted): the worker is stopped, and its
        watch restarts it."""
        while True:
            try:
                msg = await read_message(reader, TO_SUPERVISOR)
            except BadMessage as e:  # framing intact: that message alone is lost
                self._warn(logging.ERROR, "worker %d: bad IPC message ignored: %s",
                           handle.proc.pid, e)  # fmt: skip
                continue
            except ValueError as e:
                self._warn(logging.ERROR, "worker %d: unreadable IPC message (%s); stopping it",
                           handle.proc.pid, e)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    handle.proc.kill()
                return
            if msg is None:
                return
            try:
                self._worker_message(handle, msg)
            except Exception as e:  # a bug handling one message costs that message only
                self._warn(logging.ERROR, "worker %d: IPC message %r failed: %r",
                           handle.proc.pid, msg, e)  # fmt: skip

    def _worker_message(self, handle: WorkerHandle, msg: ToSupervisor) -> None:
        match msg:
            case Passive(reports):
                self.upstreams.passive(reports)
            case Ready(rev):
                handle.ready = True
                handle.revision = rev
            case Ack(rev):
                handle.revision = rev

    async def _watch_worker(self, handle: WorkerHandle) -> None:
        """Waits for the worker to exit and restarts it. Nothing a worker does (crash, garbage on
        the pipe, exiting at once every time) ends this: a failed restart is retried with a
        backoff, so the instance keeps its worker count."""
        code = await handle.proc.wait()
        try:
            self._forget_worker(handle)
        except Exception:
            log.exception("cleanup after worker %d failed", handle.proc.pid)
        if self.stopping or handle.generation != self.generation:
            return
        log.error("worker %d exited with %s; restarting", handle.proc.pid, code)
        if time.monotonic() - handle.started < CRASH_LOOP_LIFETIME:
            self._quick_exits += 1
        else:
            self._quick_exits = 0
        await self._respawn(handle.generation)

    def _forget_worker(self, handle: WorkerHandle) -> None:
        if self.metrics is not None and not self.stopping:
            self.metrics.worker_exited(handle.proc.pid)  # prometheus: keep its totals
        with contextlib.suppress(Exception):
            handle.writer.close()
        if handle in self.workers:
            self.workers.remove(handle)

    async def _respawn(self, generation: int) -> None:
        delay = min(RESPAWN_MAX_DELAY, 0.1 * 2 ** min(self._quick_exits, 8))
        while True:
            await asyncio.sleep(delay)
            if self.stopping or generation != self.generation:
                return
            try:
                await self.spawn_worker(generation)
                return
            except Exception as e:
                self._warn(logging.ERROR, "could not start a worker: %r; retrying", e)
                delay = min(RESPAWN_MAX_DELAY, delay * 2)

    def broadcast(self, msg: ToWorker) -> None:
        data = encode(msg)
        for w in self.workers:
            if not w.writer.is_closing():
                w.writer.write(data)

    def all_ready(self) -> bool:
        current = [w for w in self.workers if w.generation == self.generation]
        if not self.settings.serves_proxy:
            return self.store.loaded
        return bool(current) and all(w.ready for w in current)

    # -- the read-only view services get (tollway.instance.InstanceView) ------------------

    def source_status(self) -> SourceStatus:
        source = self.source
        etcd_rev = getattr(source, "etcd_revision", None)
        return SourceStatus(
            revision=self.store.revision,
            etcd_revision=int(etcd_rev) if etcd_rev is not None else None,
            connected=getattr(source, "connected", None),
            from_snapshot=self.agent.from_snapshot,
            rejected=self.store.rejected,
        )

    def worker_status(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(w.proc.pid, w.ready, w.revision, w.generation == self.generation)
            for w in self.workers
        ]

    def metric_files(self) -> tuple[list[str], str] | None:
        export = self.metrics
        if export is None:
            return None
        return [str(p) for p in export.directory.glob("*.db")], export.attr.metric_prefix

    # -- snapshot -----------------------------------------------------------------------

    def snapshot_dirty(self) -> None:
        if not self.settings.conf.tollway.snapshot or self.settings.config_provider != "etcd":
            return
        if self._snapshot_pending:
            return
        # At most one snapshot per SNAPSHOT_INTERVAL: a snapshot of 10k routes costs ~13 ms of
        # CPU (measured, bench/router_churn.py), too much to pay for every change.
        self._snapshot_pending = True
        now = time.monotonic()
        delay = max(0.2, self._last_snapshot + SNAPSHOT_INTERVAL - now)
        asyncio.get_running_loop().call_later(delay, self._write_snapshot)

    def _write_snapshot(self) -> None:
        if not self.all_ready() and time.monotonic() - self.started_mono < SNAPSHOT_START_WAIT:
            # Starting: encoding 100k rows (~1 s of CPU) would compete with the workers'
            # first compile, which is what start-up waits for (issue #17). Until they are
            # ready, the snapshot on disk is the previous one, as it is between two writes.
            asyncio.get_running_loop().call_later(0.25, self._write_snapshot)
            return
        self._snapshot_pending = False
        self._last_snapshot = time.monotonic()
        from tollway.config.snapshot import write_snapshot_rows

        path = self.snapshot_path
        items = self.store.items_now()
        rev = self.store.revision

        def write() -> None:  # in a thread: 100k rows are built and encoded off the loop
            write_snapshot_rows(path, rev, Store.rows_of(items))

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, write)
        fut.add_done_callback(self._snapshot_written)

    def _snapshot_written(self, fut: asyncio.Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._warn(logging.ERROR, "failed to write the config snapshot: %s", exc)

    @property
    def snapshot_path(self) -> Any:
        return self.settings.run_dir / "config-snapshot.bin"

    # -- sources ------------------------------------------------------------------------

    def make_source(self) -> ConfigSource:
        s = self.settings
        if s.config_provider in ("yaml", "json"):
            if s.api_driven:
                from tollway.config.api_source import ApiSource

                return ApiSource(s.etcd.prefix, s.run_dir / "standalone-config.json")
            return YamlSource(s.yaml_path, s.etcd.prefix)
        from tollway.config.etcd import EtcdClient, EtcdTLS
        from tollway.config.etcd_source import EtcdSource

        e = s.etcd
        tls = None
        if e.tls is not None:
            tls = EtcdTLS(cert=e.tls.cert, key=e.tls.key, verify=e.tls.verify)
        client = EtcdClient(e.host, timeout=e.timeout, user=e.user, password=e.password, tls=tls)
        self.etcd_client = client
        return EtcdSource(
            client,
            e.prefix,
            watch_timeout=e.watch_timeout,
            resync_delay=e.resync_delay,
            health_check_timeout=e.health_check_timeout,
            startup_retry=e.startup_retry,
            on_startup_failure=self._serve_snapshot,
        )

    def _serve_snapshot(self) -> None:
        from tollway.config.snapshot import read_snapshot_rows

        if self.store.loaded:
            return
        # The collector paused from the read through the load, as for etcd's (EtcdSource).
        with collector_paused():
            self._load_snapshot(read_snapshot_rows(self.snapshot_path))

    def _load_snapshot(self, snap: tuple[int, list[Row]] | None) -> None:
        if snap is None:
            log.error(
                "etcd is unreachable and there is no usable config snapshot; waiting for etcd"
            )
            return
        rev, kvs = snap
        log.error(
            "etcd is unreachable: SERVING THE LAST-KNOWN-GOOD SNAPSHOT (revision %d, %d keys) "
            "until etcd returns",
            rev,
            len(kvs),
        )
        self.agent.load_snapshot(rev, kvs)

    # -- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            self.open_sockets()
        except OSError as e:
            # e.g. another process holds the port: say which address, exit 1.
            print(f"error: cannot listen: {e}", file=sys.stderr)
            log.error("cannot listen: %s", e)
            for s in self.sockets + self.tls_sockets:
                s.close()
            return 1
        self.write_pid()
        self.source = self.make_source()
        # Start-up order (issue #17): the workers first (a new interpreter importing Tollway
        # takes ~0.3 s), then the config source, then the other HTTP services: the workers'
        # start overlaps the etcd read and its validation (which holds this loop: a worker
        # spawned after it would start that much later), and neither waits for the servers.
        try:
            await self.start_metrics()  # before any worker starts recording
            if self.settings.serves_proxy:
                for _ in range(self.settings.workers):
                    await self.spawn_worker(self.generation)
            self.tasks.append(loop.create_task(self.source.run(self.agent)))
            await self.start_services()
        except (SettingsError, OSError) as e:
            # An Admin API on a public address without a safe key, or a status/admin port that
            # another process holds: refuse to start, saying which.
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            await self.shutdown()
            return 1
        log.info(
            "tollway started: %d workers, listening on %s, config from %s",
            self.settings.workers,
            ", ".join(f"{ip}:{port}" for ip, port in self.settings.listens),
            self.settings.config_provider,
        )
        while True:
            stop = loop.create_task(self._stop.wait())
            reload = loop.create_task(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._stop.is_set():
                break
            self._reload.clear()
            await self.reload_workers()
        await self.shutdown()
        return 0

    async def start_metrics(self) -> None:
        """The Prometheus export (tollway.metrics): its directory, which workers record into,
        and its server."""
        self.metrics = MetricsExport.for_instance(self)
        if self.metrics is not None:
            runner = await self.metrics.start_server(self)
            if runner is not None:
                self.runners.append(runner)

    async def start_services(self) -> None:
        from tollway.status import start_status_server

        runner = await start_status_server(self)
        if runner is not None:
            self.runners.append(runner)
        from tollway.control import start_control_server

        runner = await start_control_server(self)
        if runner is not None:
            self.runners.append(runner)
        if self.settings.serves_admin and (
            self.settings.config_provider == "etcd" or self.settings.api_driven
        ):
            from tollway.admin.server import start_admin_server

            runner = await start_admin_server(self)
            if runner is not None:
                self.runners.append(runner)

    async def reload_workers(self) -> None:
        """SIGHUP: start a new generation, wait until it has loaded, then drain the old one."""
        old = list(self.workers)
        self.generation += 1
        new = [await self.spawn_worker(self.generation) for _ in range(self.settings.workers)]
        deadline = time.monotonic() + 30
        while not all(w.ready for w in new) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in old:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        log.info("reloaded: %d new workers", len(new))

    async def shutdown(self) -> None:
        """Listeners close first (a connection then gets a refusal, not a backlog nobody
        accepts from); then workers drain while the HTTP services stop, all within
        ``tollway.graceful_timeout`` whatever etcd does: an Admin API request waiting on a
        frozen etcd is cancelled when its share of the timeout is out."""
        self.stopping = True
        for s in self.sockets + self.tls_sockets:
            s.close()
        if self._snapshot_pending:
            # A change from the last seconds is not on disk yet: write it before leaving.
            from tollway.config.snapshot import write_snapshot_rows

            self._snapshot_pending = False
            try:
                rows = self.store.snapshot_rows()
                write_snapshot_rows(self.snapshot_path, self.store.revision, rows)
            except Exception as e:  # stopping goes on: the previous snapshot stays as it was
                log.error("failed to write the config snapshot: %r", e)
        for w in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        grace = self.settings.conf.tollway.graceful_timeout
        await asyncio.gather(
            self._drain_workers(grace + 5), *(self._stop_runner(r, grace) for r in self.runners)
        )
        for t in self.tasks:
            t.cancel()
        for w in self.workers:
            for t in w.tasks:
                t.cancel()
        await self.upstreams.aclose()
        if self.source is not None:
            await self.source.aclose()
        client = self.etcd_client
        if client is not None:
            await client.aclose()
        from tollway.plugins.shared_counters import remove_instance_files

        remove_instance_files()  # the workers are gone: their shared counter tables too
        if self.metrics is not None:
            self.metrics.close()  # prometheus: the workers' metric files
        with contextlib.suppress(OSError):
            os.unlink(self.pid_path)

    async def _drain_workers(self, timeout: float) -> None:
        procs = [w.proc for w in self.workers]
        if procs:
            try:
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
            except TimeoutError:
                for p in procs:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()

    async def _stop_runner(self, runner: Any, timeout: float) -> None:
        # The runner's own shutdown_timeout cancels slow handlers; this bounds whatever else
        # its cleanup might wait for.
        try:
            await asyncio.wait_for(runner.cleanup(), timeout)
        except TimeoutError:
            log.warning("an HTTP service did not stop within %.0f s", timeout)

    @property
    def pid_path(self) -> Any:
        return self.settings.run_dir / "tollway.pid"

    def write_pid(self) -> None:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(f"{os.getpid()}\n")
