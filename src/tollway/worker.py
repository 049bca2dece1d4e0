"""A worker process: receives config over IPC from the supervisor, serves HTTP.

Workers never talk to etcd. They start accepting connections only after the first full load has
been compiled, so a restarted worker never answers 404 for routes that exist.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time

import uvloop

from tollway.config.store import Store
from tollway.ipc import (
    TO_WORKER,
    Ack,
    Apply,
    BadMessage,
    Dns,
    Health,
    Load,
    Message,
    Ready,
    encode,
    read_message,
)
from tollway.logs import setup_logging
from tollway.memory import collector_off_for_load, settle_after_load
from tollway.native import STATUS as NATIVE_STATUS
from tollway.plugins.builtin.prometheus import server_stats
from tollway.plugins.registry import load_registry
from tollway.proxy.accesslog import AccessLog
from tollway.proxy.realip import RealIp
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.proxy.tls import server_context, sync_client_cas
from tollway.runtime.compiler import Compiler
from tollway.settings import LoadedSettings, load_settings
from tollway.upstream.table import HealthTable, PassiveReporter

log = logging.getLogger("tollway.worker")

# On graceful stop, an idle keep-alive connection is closed once idle this long.
IDLE_GRACE = 1.0
STATS_INTERVAL = 1.0  # seconds between writes of the request total and connection states


class Worker:
    def __init__(
        self,
        settings: LoadedSettings,
        ipc: socket.socket,
        listen: list[socket.socket],
        tls: list[socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        self.ipc = ipc
        self.listen = listen
        self.tls = tls or []
        self.store = Store(settings.etcd.prefix, lean=True)
        self.registry = load_registry(settings.conf.plugins, settings.plugin_attr)
        # Health verdicts and DNS answers come from the supervisor (tollway.upstream).
        self.health = HealthTable()
        self.passive = PassiveReporter()
        self.compiler = Compiler(settings, self.registry, health=self.health, passive=self.passive)
        http = settings.conf.nginx_config.http
        self.access_log = (
            AccessLog(
                str(settings.resolve(http.access_log)),
                http.access_log_format,
                http.access_log_format_escape,
            )
            if http.enable_access_log
            else None
        )
        http = settings.conf.nginx_config.http
        self.state = ServerState(
            self.compiler,
            max_header_size=settings.conf.tollway.max_header_size,
            max_body_size=settings.client_max_body_size,
            keepalive_timeout=settings.keepalive_timeout,
            header_timeout=settings.client_header_timeout,
            body_timeout=settings.client_body_timeout,
            send_timeout=settings.send_timeout,
            access_log=self.access_log,
            server_tokens=settings.conf.apisix.enable_server_tokens,
            show_upstream_status=settings.conf.apisix.show_upstream_status_in_response_header,
            retry_non_idempotent=settings.conf.tollway.retry_non_idempotent,
            real_ip=RealIp.from_conf(
                http.real_ip_header, http.real_ip_from, http.real_ip_recursive
            ),
            http2=settings.http2,
        )
        self.servers: list[asyncio.Server] = []
        self.stopping = asyncio.Event()
        self.tls_context: ssl.SSLContext | None = None
        self._tls_synced: object = None
        self._client_cas: set[str] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.state.start(loop)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
        loop.add_signal_handler(signal.SIGQUIT, self.stopping.set)
        reader, writer = await asyncio.open_connection(sock=self.ipc)
        ipc_task = loop.create_task(self._ipc_loop(reader, writer))
        stop_task = loop.create_task(self.stopping.wait())
        stats_task = self._start_stats(loop)
        await asyncio.wait({ipc_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        await self._graceful_stop()
        ipc_task.cancel()
        stop_task.cancel()
        if stats_task is not None:
            stats_task.cancel()
        writer.close()

    def _start_stats(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
        """With metrics exported, the request total and connection states every second."""
        if "prometheus" not in self.registry.plugins:
            return None
        stats = server_stats(self.settings.plugin_attr.get("prometheus") or {})
        if stats is None:
            return None
        state = self.state

        async def tick() -> None:
            try:
                while True:
                    stats.write(state.requests, state.connection_states())
                    await asyncio.sleep(STATS_INTERVAL)
            finally:
                stats.write(state.requests, state.connection_states())
                stats.close()

        return loop.create_task(tick())

    async def _ipc_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(msg: Message) -> None:
            if not writer.is_closing():
                writer.write(encode(msg))

        self.passive.attach(send)
        while True:
            try:
                msg = await read_message(reader, TO_WORKER)
            except BadMessage as e:  # from a newer supervisor, say: skip it, keep serving
                log.error("unknown IPC message ignored: %s", e)
                continue
            if msg is None:
                log.warning("supervisor went away; stopping")
                return
            loaded_first: bool | None = None  # after a full load: whether it was the first
            match msg:
                case Health(key, unhealthy):
                    self.health.update(key, unhealthy)
                case Dns(names):
                    self.compiler.apply_dns(names)
                case Load() | Apply():
                    if isinstance(msg, Load):
                        loaded_first = not self.servers
                    await self._apply_config(msg)
                    first = not self.servers
                    if first:
                        await self._start_serving()
                    pid = os.getpid()
                    writer.write(encode(Ready(msg.rev, pid) if first else Ack(msg.rev, pid)))
            del msg  # a Load holds every value: not kept while waiting for the next message
            if loaded_first is not None:
                # Once the Load is gone: its buffer of values goes back with the rest.
                settle_after_load(first=loaded_first)

    async def _apply_config(self, msg: Load | Apply) -> None:
        t0 = time.perf_counter()
        if isinstance(msg, Load):
            first = not self.servers
            with collector_off_for_load():
                self.store.load_rows(msg.rev, msg.rows())
                t1 = time.perf_counter()
                try:
                    await self.compiler.load(self.store, first=first)
                finally:
                    self.store.release()  # the message's buffer of values goes with it
            # Start-up at scale is measured step by step (bench/scale.py reads this line).
            log.info(
                "worker %d: loaded %d items at revision %d: store %.0f ms, compile %.0f ms",
                os.getpid(),
                len(msg.keys),
                msg.rev,
                (t1 - t0) * 1e3,
                (time.perf_counter() - t1) * 1e3,
            )
        else:
            self.store.apply(msg.rev, msg.key_values())
            self.compiler.apply(self.store, self.store.last_changes)
        self._sync_tls()
        elapsed = (time.perf_counter() - t0) * 1e3
        log.debug("applied %s rev=%d in %.1f ms", type(msg).__name__, msg.rev, elapsed)

    def _sync_tls(self) -> None:
        """The listener asks for client certificates while an ssl object wants them (mTLS)."""
        certs = self.compiler.runtime.certs
        if self.tls_context is not None and certs is not self._tls_synced:
            self._tls_synced = certs
            sync_client_cas(self.tls_context, certs, self._client_cas)

    async def _start_serving(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.listen:
            srv = await loop.create_server(
                lambda: HttpProtocol(self.state), sock=sock, backlog=4096
            )
            self.servers.append(srv)
        if self.tls:
            ctx = server_context(
                lambda: self.compiler.runtime.certs,
                self.settings.conf.apisix.ssl.ssl_protocols,
                self.settings.http2,
            )
            self.tls_context = ctx
            self._sync_tls()
            for sock in self.tls:
                srv = await loop.create_server(
                    lambda: HttpProtocol(self.state, scheme="https"),
                    sock=sock,
                    backlog=4096,
                    ssl=ctx,
                    ssl_handshake_timeout=10,
                )
                self.servers.append(srv)
        log.info(
            "worker %d serving %d routes; request path: %s",
            os.getpid(),
            len(self.compiler.routes),
            NATIVE_STATUS,
        )

    async def _graceful_stop(self) -> None:
        state = self.state
        state.shutting_down = True
        for srv in self.servers:
            srv.close()
        # Idle keep-alive connections get a moment in which a request already on its way is
        # still answered (with "Connection: close"); closing them at once races with clients
        # reusing them and shows up as resets. Busy connections close after their answer.
        deadline = time.monotonic() + self.settings.conf.tollway.graceful_timeout
        while (state.exchanges or state.connections) and time.monotonic() < deadline:
            for conn in list(state.connections):
                conn.close_if_idle(IDLE_GRACE)
            await asyncio.sleep(0.05)
        for conn in list(state.connections):
            conn.close()
        state.pool.close_all()
        state.h2pool.close_all()
        for plugin in self.registry.plugins.values():
            try:
                await plugin.aclose()
            except Exception:
                log.exception("plugin %s failed to close", plugin.name)
        state.stop()
        if self.access_log is not None:
            await self.access_log.aclose()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tollway-worker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--ipc-fd", type=int, required=True)
    ap.add_argument("--listen-fds", default="")
    ap.add_argument("--tls-fds", default="")
    args = ap.parse_args(argv)
    settings = load_settings(args.config, warn=False)  # the supervisor already warned
    setup_logging(settings)
    ipc = socket.socket(fileno=args.ipc_fd)
    listen = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",") if fd]
    tls = [socket.socket(fileno=int(fd)) for fd in args.tls_fds.split(",") if fd]
    gc.freeze()  # config objects are long-lived: keep them out of the young generations
    # Per-request objects die by reference counting; collect the young generation rarely
    # instead of every 700 allocations (a few requests' worth).
    gc.set_threshold(50_000, 50, 100)
    uvloop.run(Worker(settings, ipc, listen, tls).run())
    sys.exit(0)


if __name__ == "__main__":
    main()
