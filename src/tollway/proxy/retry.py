"""The retry decision: after a failed upstream attempt, try again or give up with a status.

Pure (no asyncio, no clock of its own): the attempt loop asks with what it knows. APISIX/nginx
retry on connection errors and timeouts before a response only (``proxy_next_upstream error
timeout``), at most ``retries`` times, and never after ``retry_timeout`` has passed since the
request's first attempt began (then 502, "proxy retry timeout"). Tollway also never re-sends a
non-idempotent request once bytes may have reached the upstream (RFC 9110 9.2.2), unless
``retry_non_idempotent`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from tollway.httprules.methods import IDEMPOTENT

RETRY = 0  # the decision to try again; any other value is the status to give up with


@dataclass(frozen=True, slots=True)
class Attempted:
    """How an attempt failed."""

    status: int  # what the client gets if this is the last try (502, 504, 499...)
    retryable: bool  # a connection error or timeout before any response byte
    sent: bool  # request bytes may have reached the upstream


@dataclass(frozen=True, slots=True)
class Budget:
    """What the request may still spend on retries."""

    tries: int  # retries made so far
    retries: int  # the upstream's ``retries``
    deadline: float  # monotonic end of ``retry_timeout`` (0: none)
    method: str
    resend_non_idempotent: bool = False  # tollway.retry_non_idempotent
    replayable: bool = True  # the request body can be sent again (none, or buffered whole)


def decide(failure: Attempted, budget: Budget, now: float, response_started: bool) -> int:
    """``RETRY`` or the status to answer with."""
    if (
        not failure.retryable
        or response_started
        or budget.tries >= budget.retries
        or not budget.replayable
        or not may_resend(failure.sent, budget.method, budget.resend_non_idempotent)
    ):
        return failure.status
    if over(budget.deadline, now):
        return 502  # APISIX: "proxy retry timeout", whatever the tries answered
    return RETRY


def may_resend(sent: bool, method: str, resend_non_idempotent: bool) -> bool:
    """A request whose bytes may have reached the upstream is sent again only when its method
    is idempotent (RFC 9110 9.2.2), or when configured to."""
    return not sent or method in IDEMPOTENT or resend_non_idempotent


def over(deadline: float, now: float) -> bool:
    """``retry_timeout`` has passed (it bounds every try after the first, a fresh connection
    after a reused one failed included)."""
    return bool(deadline) and now > deadline


def deadline_of(started: float, retry_timeout: float) -> float:
    return started + retry_timeout if retry_timeout else 0.0
