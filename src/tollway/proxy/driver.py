"""The attempt driver shared by HTTP/1.1 (``attempt``) and gRPC (``grpc_attempt``) upstreams:
pick a server, make an attempt object, hold it on the exchange (``ExchangeBase.held``) while it
runs, report how it went to the balancer and passive health checks, and ask the pure retry
decision (``retry.decide``) whether to try again.

What differs per protocol is a ``Call`` (the request as every attempt sends it: it makes the
attempts and answers when the driver gives up); the exchange inherits none of it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from tollway.balancer import PickContext, Server, hash_key_for
from tollway.proxy.base import HeldAttempt
from tollway.proxy.retry import RETRY, Attempted, Budget, decide

if TYPE_CHECKING:
    from tollway.proxy.base import ExchangeBase
    from tollway.runtime.compiled import CompiledUpstream

log = logging.getLogger("tollway.proxy")


class Failure(Protocol):
    """How an attempt failed (``attempt.UpstreamFailure``, ``grpc_attempt.GrpcFailure``)."""

    @property
    def status(self) -> int: ...
    def attempted(self) -> Attempted: ...


class Attempt(HeldAttempt, Protocol):
    async def run(self) -> Failure | None:
        """Send the request and stream the answer: None when it succeeded."""
        ...


class Call(Protocol):
    """One proxied request's attempts, for one protocol."""

    @property
    def ex(self) -> ExchangeBase: ...
    @property
    def up(self) -> CompiledUpstream: ...
    def attempt(self, server: Server, pick: PickContext | None) -> Attempt: ...
    def resendable(self) -> bool:
        """The request body can be sent again (none, or kept whole)."""
        ...

    def give_up(self, status: int, statuses: list[str]) -> None:
        """Answer with ``status`` (the tries' statuses so far in ``statuses``)."""
        ...


async def drive(
    call: Call,
    pick: PickContext | None,
    deadline: float,
    server: Server | None = None,
    failure: Failure | None = None,
) -> None:
    """Attempts until one succeeds or the retry decision gives up. ``server``: the first try's
    server when already picked; ``failure``: how an attempt on it already failed (the fast
    path's); ``deadline``: the end of retry_timeout (0: none)."""
    ex, up = call.ex, call.up
    ctx = ex.ctx
    assert ctx is not None
    statuses: list[str] = []
    tries = 0
    while True:
        if failure is None:
            if server is None:
                server = next_server(up, pick)
                if server is None:
                    call.give_up(502, statuses)  # no healthy node left to try
                    return
            attempt = call.attempt(server, pick)
            ctx.upstream_addr = server.addr
            if statuses:
                ex.upstream_statuses = statuses  # the answer's X-APISIX-Upstream-Status
            ex.held = attempt
            at = time.monotonic()
            try:
                failure = await attempt.run()
            finally:
                ex.held = None
            if failure is None:
                succeeded(ex, up, server, pick, at, statuses)
                return
        assert server is not None
        failed(ex, up, server, pick, failure, statuses)
        # A single node is tried again (APISIX's balancer hands out the one node it has).
        budget = Budget(
            tries,
            up.retries,
            deadline,
            ex.method,
            ex.proto.state.retry_non_idempotent,
            call.resendable(),
        )
        verdict = decide(failure.attempted(), budget, time.monotonic(), ex.response_started)
        if verdict != RETRY or ex.client_closed:
            call.give_up(verdict or failure.status, statuses)
            return
        tries += 1  # after_balance(failed=True) marked the server as tried
        server = failure = None


def pick_context(ex: ExchangeBase, up: CompiledUpstream) -> PickContext | None:
    """The balancer's per-request state (None: a single node, nothing to pick)."""
    if up.single is not None:
        return None
    pick = PickContext()
    if up.conf.type == "chash":
        ctx = ex.ctx
        assert ctx is not None
        pick.hash_key = hash_key_for(
            up.hash_on, up.hash_key, ctx.var, ctx.consumer_name, ctx.remote_addr
        )
    return pick


def next_server(up: CompiledUpstream, pick: PickContext | None) -> Server | None:
    if pick is None:
        return up.single
    return up.picker.pick(pick) if up.picker is not None else None


def succeeded(
    ex: ExchangeBase,
    up: CompiledUpstream,
    server: Server,
    pick: PickContext | None,
    started: float,
    statuses: list[str] | None,
) -> None:
    """An attempt got its answer: the balancer and passive health checks hear of it."""
    elapsed = time.monotonic() - started
    ctx = ex.ctx
    assert ctx is not None
    ctx.upstream_response_time = elapsed  # nginx $upstream_response_time
    if pick is not None and up.picker is not None:
        up.picker.after_balance(server, pick, failed=False, latency=elapsed)
    if up.passive is not None:  # passive health: the response status (APISIX)
        up.passive.report(up.key, server.addr, "http", ex.status)
    if statuses:
        statuses.append(str(ex.status))
        ctx.upstream_status = ", ".join(statuses)


def failed(
    ex: ExchangeBase,
    up: CompiledUpstream,
    server: Server,
    pick: PickContext | None,
    f: Failure,
    statuses: list[str] | None,
) -> None:
    """An attempt failed: recorded in ``statuses``; the balancer marks the server tried (and
    least_conn releases it); passive health counts a timeout or a TCP failure, not a client
    that left (499)."""
    if statuses is not None:
        statuses.append(str(f.status))
    if pick is not None and up.picker is not None:
        up.picker.after_balance(server, pick, failed=True)
    if up.passive is not None and f.status != 499:  # passive health (APISIX)
        up.passive.report(up.key, server.addr, "timeout" if f.status == 504 else "tcp", 0)
    log.debug("upstream %s:%d failed: %s", server.host, server.port, f)
