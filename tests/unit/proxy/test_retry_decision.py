"""The retry decision as values in, a verdict out (proxy/retry.py; APISIX/nginx retry rules)."""

from __future__ import annotations

from tollway.proxy.retry import RETRY, Attempted, Budget, deadline_of, decide, may_resend, over

CONNECT_FAILED = Attempted(502, retryable=True, sent=False)
READ_TIMEOUT = Attempted(504, retryable=True, sent=True)


def budget(**kw: object) -> Budget:
    base: dict[str, object] = {"tries": 0, "retries": 2, "deadline": 0.0, "method": "GET"}
    base.update(kw)
    return Budget(**base)  # type: ignore[arg-type]


def test_retries_a_connection_failure_while_tries_remain() -> None:
    assert decide(CONNECT_FAILED, budget(tries=0), 0.0, False) == RETRY
    assert decide(CONNECT_FAILED, budget(tries=1), 0.0, False) == RETRY
    # retries exhausted: the last failure's status
    assert decide(CONNECT_FAILED, budget(tries=2), 0.0, False) == 502
    assert decide(READ_TIMEOUT, budget(tries=2), 0.0, False) == 504


def test_never_after_the_response_started_or_for_non_retryable_failures() -> None:
    assert decide(READ_TIMEOUT, budget(), 0.0, True) == 504
    assert decide(Attempted(499, retryable=False, sent=True), budget(), 0.0, False) == 499


def test_non_idempotent_request_is_not_sent_twice_once_bytes_left() -> None:
    # RFC 9110 9.2.2: POST is not idempotent; a connect failure sent nothing, so it may retry
    assert decide(READ_TIMEOUT, budget(method="POST"), 0.0, False) == 504
    assert decide(CONNECT_FAILED, budget(method="POST"), 0.0, False) == RETRY
    assert decide(READ_TIMEOUT, budget(method="PUT"), 0.0, False) == RETRY
    assert decide(READ_TIMEOUT, budget(method="POST", resend_non_idempotent=True), 0, False) == 0
    assert may_resend(False, "POST", False) and not may_resend(True, "PATCH", False)


def test_a_body_that_streamed_cannot_be_replayed() -> None:
    assert decide(CONNECT_FAILED, budget(replayable=False), 0.0, False) == 502


def test_retry_timeout_bounds_the_whole_request() -> None:
    deadline = deadline_of(100.0, 0.5)  # the first attempt began at 100 s
    assert deadline == 100.5 and deadline_of(100.0, 0) == 0.0
    assert decide(READ_TIMEOUT, budget(deadline=deadline), 100.4, False) == RETRY
    # past the limit: 502 (APISIX "proxy retry timeout"), whatever the try answered
    assert decide(READ_TIMEOUT, budget(deadline=deadline), 100.6, False) == 502
    assert over(deadline, 100.6) and not over(deadline, 100.5) and not over(0.0, 1e9)
    # a give-up for another reason keeps that reason's status
    assert decide(READ_TIMEOUT, budget(deadline=deadline, tries=2), 100.6, False) == 504
