"""ServerState.send: fast-path writes leave in one burst per event-loop iteration, in order per
transport; with one request in flight they leave at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tollway.plugins.registry import load_registry
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings


class Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def run_soon(self) -> None:
        todo, self.soon = self.soon, []
        for fn in todo:
            fn()


class Transport:
    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self.log = log
        self.name = name
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


Log = list[tuple[str, bytes]]


def make_state(in_flight: int) -> tuple[ServerState, Loop, Log, Transport, Transport]:
    """A worker's state with ``in_flight`` requests, a hand-run loop and two logged transports."""
    state = ServerState(
        Compiler(default_settings(Path("/tmp/conf")), load_registry()),
        max_header_size=1024,
        max_body_size=0,
        keepalive_timeout=5,
    )
    loop = Loop()
    state.loop = state.writes.loop = loop  # type: ignore[assignment]
    state.exchanges.update(object() for _ in range(in_flight))  # type: ignore[misc]
    log: Log = []
    return state, loop, log, Transport(log, "a"), Transport(log, "b")


def test_writes_wait_for_the_end_of_the_iteration_and_keep_their_order() -> None:
    state, loop, log, a, b = make_state(in_flight=3)
    state.send(a, b"a1")  # type: ignore[arg-type]
    state.send(b, b"b1")  # type: ignore[arg-type]
    state.send(a, b"a2")  # type: ignore[arg-type]
    assert log == [] and len(loop.soon) == 1  # one flush per iteration, not one per write
    loop.run_soon()
    assert log == [("a", b"a1"), ("b", b"b1"), ("a", b"a2")]
    state.send(a, b"a3")  # type: ignore[arg-type]
    assert len(loop.soon) == 1  # the next iteration schedules its own flush


def test_a_direct_writer_flushes_first_and_closed_transports_are_skipped() -> None:
    state, loop, log, a, b = make_state(in_flight=2)
    state.send(a, b"deferred")  # type: ignore[arg-type]
    state.send(b, b"lost")  # type: ignore[arg-type]
    b.closing = True  # its client went away before the flush
    state.flush_writes()  # what Exchange.write / HttpProtocol.close do before writing or closing
    a.write(b"direct")
    loop.run_soon()  # the scheduled flush finds nothing left
    assert log == [("a", b"deferred"), ("a", b"direct")]


def test_one_request_in_flight_writes_at_once() -> None:
    state, loop, log, a, _ = make_state(in_flight=1)
    state.send(a, b"now")  # type: ignore[arg-type]
    assert log == [("a", b"now")] and loop.soon == []


class Connection:
    """An HTTP/2 client connection's side of flush_later (H2Protocol.flush writes its frames)."""

    def __init__(self, transport: Transport, frames: bytes) -> None:
        self.transport = transport
        self.frames = frames

    def flush(self) -> None:
        self.transport.write(self.frames)


def test_http2_connections_flush_with_the_deferred_writes_one_call_per_iteration() -> None:
    state, loop, log, a, b = make_state(in_flight=3)
    state.writes.flush_later(Connection(a, b"frames-a"), loop)  # type: ignore[arg-type]
    state.send(b, b"upstream")  # type: ignore[arg-type]
    state.writes.flush_later(Connection(b, b"frames-b"), loop)  # type: ignore[arg-type]
    assert log == [] and len(loop.soon) == 1  # one scheduled call for all of them
    loop.run_soon()
    assert log == [("b", b"upstream"), ("a", b"frames-a"), ("b", b"frames-b")]
    state.flush_writes()
    assert len(log) == 3  # nothing is flushed twice
    state.send(a, b"next")  # type: ignore[arg-type]
    assert len(loop.soon) == 1  # the next iteration schedules its own
