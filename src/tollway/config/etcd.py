"""An async etcd v3 client over the HTTP/JSON gateway (``/v3/...``), on aiohttp.

Invariants: aiohttp exceptions never leave this module (they become ``tollway.errors``); one
ClientSession per process and event loop, created lazily, so a forked worker never reuses its
parent's sockets. Wire format per shared/reference/etcd.md §6: keys, values and range_end are
base64, int64 fields are JSON strings, proto3 defaults are omitted (no ``type`` on PUT events, no
``kvs`` on an empty range, no ``more`` when false).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgspec

from tollway.errors import EtcdCompacted, EtcdError, EtcdUnavailable

log = logging.getLogger("tollway.config")

__all__ = [
    "KV",
    "EtcdClient",
    "EtcdTLS",
    "RangeResult",
    "Watch",
    "WatchEvent",
    "WatchResponse",
    "prefix_range_end",
]

# gRPC status codes that etcd's gateway puts in "code" (google.golang.org/grpc/codes).
_DEADLINE_EXCEEDED = 4
_OUT_OF_RANGE = 11
_UNAVAILABLE = 14
_FAILED_PRECONDITION = 9
# A range with this many keys or more after its first page reads them over gRPC (issue #17):
# below it, importing grpcio (~0.15 s) costs more than the gateway's JSON does.
GRPC_BULK_MIN = 5000


# -- public value types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    kvs: list[KV]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" | "DELETE"
    kv: KV


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One line of the watch stream. ``revision`` is the response header's store revision.

    Kinds: ``created`` (first line), events, progress (no events, not created, not canceled),
    ``canceled`` (with ``compact_revision`` > 0 when the start revision was compacted).
    """

    revision: int
    events: list[WatchEvent] = field(default_factory=list)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    ca: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


# -- wire format (decoded by msgspec: base64 → bytes, "123" → int with strict=False) --------


class _Header(msgspec.Struct):
    revision: int = 0


class _KVMsg(msgspec.Struct):
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def to_kv(self) -> KV:
        return KV(
            _key_str(self.key),
            self.value,
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        )


class _RangeMsg(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    kvs: list[_KVMsg] = msgspec.field(default_factory=list)
    more: bool = False
    count: int = 0


class _PutMsg(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    prev_kv: _KVMsg | None = None


class _DeleteMsg(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    deleted: int = 0


class _TxnMsg(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    succeeded: bool = False


class _LeaseMsg(msgspec.Struct):
    ID: int = 0
    TTL: int = 0
    error: str = ""


class _AuthMsg(msgspec.Struct):
    token: str = ""


class _ErrorMsg(msgspec.Struct):
    error: str = ""
    message: str = ""
    code: int = 0


class _EventMsg(msgspec.Struct):
    type: str = "PUT"
    kv: _KVMsg = msgspec.field(default_factory=_KVMsg)


class _WatchResultMsg(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[_EventMsg] = msgspec.field(default_factory=list)


class _StreamErrorMsg(msgspec.Struct):
    grpc_code: int = 0
    http_code: int = 0
    message: str = ""


class _WatchLineMsg(msgspec.Struct):
    result: _WatchResultMsg | None = None
    error: _StreamErrorMsg | None = None


_range_dec = msgspec.json.Decoder(_RangeMsg, strict=False)
_put_dec = msgspec.json.Decoder(_PutMsg, strict=False)
_delete_dec = msgspec.json.Decoder(_DeleteMsg, strict=False)
_txn_dec = msgspec.json.Decoder(_TxnMsg, strict=False)
_lease_dec = msgspec.json.Decoder(_LeaseMsg, strict=False)
_auth_dec = msgspec.json.Decoder(_AuthMsg, strict=False)
_error_dec = msgspec.json.Decoder(_ErrorMsg, strict=False)
_watch_dec = msgspec.json.Decoder(_WatchLineMsg, strict=False)
_encode = msgspec.json.Encoder().encode  # bytes values are encoded as base64 strings


# What a range makes of each key-value: (key, value, create_revision, mod_revision, version,
# lease) -> an item of the answer.
T = TypeVar("T")
MakeItem = Callable[[bytes, bytes, int, int, int, int], T]
# A config row: (key, value, mod_revision, create_revision), as ``tollway.config.store`` loads.
Row = tuple[str, bytes, int, int]


def _make_kv(
    key: bytes, value: bytes, create_revision: int, mod_revision: int, version: int, lease: int
) -> KV:
    return KV(_key_str(key), value, create_revision, mod_revision, version, lease)


def _make_row(
    key: bytes, value: bytes, create_revision: int, mod_revision: int, version: int, lease: int
) -> Row:
    return (_key_str(key), value, mod_revision, create_revision)


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _key_str(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (etcd.md §6, gotcha 4):
    increment the last byte below 0xff and cut after it; all 0xff (or empty) → ``\\x00``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise EtcdError(f"etcd {what}: malformed response: {e}") from e


def _watch_response(msg: _WatchResultMsg) -> WatchResponse:
    events = [WatchEvent(ev.type, ev.kv.to_kv()) for ev in msg.events]
    return WatchResponse(
        msg.header.revision,
        events,
        msg.created,
        msg.canceled,
        msg.compact_revision,
        msg.cancel_reason,
    )


# -- connection-level failures -------------------------------------------------------------

# Everything that means "this endpoint did not answer": refused, reset, timed out, truncated.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
    OSError,
)


class _EndpointDown(Exception):
    """Internal: one endpoint failed at the connection level (try the next one)."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"{endpoint}: {reason}")


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"


def _answer_error(status: int, body: bytes, endpoint: str) -> EtcdError:
    """Translate a non-200 gateway answer. Compaction gets its own type."""
    try:
        err = _error_dec.decode(body)
        message, code = err.message or err.error, err.code
    except (msgspec.DecodeError, UnicodeDecodeError):
        message, code = body[:200].decode(errors="replace").strip(), None
    if code == _OUT_OF_RANGE and "compacted" in message:
        exc: EtcdError = EtcdCompacted(0)
        exc.code, exc.status = code, status
        return exc
    return EtcdError(f"etcd {endpoint}: {message or status}", code=code, status=status)


def _unavailable_answer(e: EtcdError) -> bool:
    """An answer that says this member cannot serve now (no leader, timeout): try another."""
    return (e.status is not None and e.status >= 500) or e.code in (
        _UNAVAILABLE,
        _DEADLINE_EXCEEDED,
    )


def _token_refused(message: str) -> bool:
    """etcd refused our token: expired simple token, or auth enabled after we looked."""
    return "invalid auth token" in message or "user name is empty" in message


# -- the client ------------------------------------------------------------------------------


class EtcdClient:
    """etcd v3 over HTTP/JSON. Endpoints are tried in order starting from the last one that
    answered; an endpoint that failed goes to the back of the line for ``fail_timeout`` s."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 30,
        user: str | None = None,
        password: str | None = None,
        tls: EtcdTLS | None = None,
        fail_timeout: float = 10.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.fail_timeout = fail_timeout
        self._user = user
        self._password = password or ""
        self._tls = tls
        self._ssl: ssl.SSLContext | bool = tls.context() if tls is not None else True
        self._current = 0
        self._failed_at: dict[str, float] = {}
        self._token: str | None = None  # "" = auth not enabled on the server
        self._auth_lock: asyncio.Lock | None = None
        self._session: aiohttp.ClientSession | None = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._answer_waiters: list[asyncio.Future[None]] = []

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to first (the last one that answered)."""
        return self.endpoints[self._current]

    # -- plumbing ---------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._session is None or self._owner != owner or self._session.closed:
            # A session inherited through fork (or from another loop) is abandoned, not closed:
            # its sockets and futures belong to the parent's loop.
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
            if self._owner is not None and self._owner != owner:
                self._answer_waiters = []  # futures of another process or loop
            self._owner = owner
            self._auth_lock = asyncio.Lock()
        return self._session

    def _order(self) -> list[str]:
        """Endpoints to try: the current one first, recently failed ones last."""
        n = len(self.endpoints)
        ring = [self.endpoints[(self._current + i) % n] for i in range(n)]
        now = time.monotonic()
        fresh = [e for e in ring if now - self._failed_at.get(e, -1e18) >= self.fail_timeout]
        return fresh + [e for e in ring if e not in fresh]

    def _mark_ok(self, endpoint: str) -> None:
        self._failed_at.pop(endpoint, None)
        self._current = self.endpoints.index(endpoint)
        waiters, self._answer_waiters = self._answer_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_answer(self) -> None:
        """Returns when any request through this client next gets an answer from etcd (a
        request of another task, say an Admin API write): the config watch uses it to end its
        backoff as soon as etcd is back instead of sleeping it out."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answer_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._answer_waiters:
                self._answer_waiters.remove(fut)

    def _mark_failed(self, endpoint: str) -> None:
        self._failed_at[endpoint] = time.monotonic()

    async def _call(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> bytes:
        """POST to the first endpoint that answers; translate every failure."""
        session = self._get_session()
        reasons: list[str] = []
        for endpoint in self._order():
            try:
                data = await self._call_endpoint(session, endpoint, path, body, timeout)
            except _EndpointDown as e:
                self._mark_failed(endpoint)
                reasons.append(str(e))
                continue
            self._mark_ok(endpoint)
            return data
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(reasons))

    async def _call_endpoint(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        path: str,
        body: dict[str, Any],
        timeout: float | None,
    ) -> bytes:
        payload = _encode(body)
        for attempt in range(2):
            headers = await self._auth_headers(session, endpoint)
            status, data = await self._post(session, endpoint, path, payload, headers, timeout)
            if status == 200:
                return data
            err = _answer_error(status, data, endpoint)
            if self._user is not None and _token_refused(str(err)) and attempt == 0:
                self._token = None  # authenticate again, retry once
                continue
            if _unavailable_answer(err):
                raise _EndpointDown(endpoint, str(err))
            raise err
        raise AssertionError("unreachable")

    async def _post(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        timeout: float | None,
    ) -> tuple[int, bytes]:
        client_timeout = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        # aiohttp wants bodies over 1 MiB as a stream (it warns for raw bytes).
        big = len(payload) >= 1 << 20
        # A keep-alive connection may have died with a restarted etcd: one immediate retry.
        for attempt in range(2):
            try:
                data = io.BytesIO(payload) if big else payload
                async with session.post(
                    endpoint + path, data=data, headers=headers, timeout=client_timeout
                ) as resp:
                    return resp.status, await resp.read()
            except aiohttp.ServerDisconnectedError as e:
                if attempt == 1:
                    raise _EndpointDown(endpoint, _describe(e)) from e
            except _TRANSPORT_ERRORS as e:
                raise _EndpointDown(endpoint, _describe(e)) from e
            except aiohttp.ClientError as e:  # e.g. InvalidURL: a config error, not an outage
                raise EtcdError(f"etcd {endpoint}: {_describe(e)}") from e
        raise AssertionError("unreachable")

    async def _auth_headers(self, session: aiohttp.ClientSession, endpoint: str) -> dict[str, str]:
        if self._user is None:
            return {}
        if self._token is None:
            assert self._auth_lock is not None
            async with self._auth_lock:
                if self._token is None:
                    self._token = await self._authenticate(session, endpoint)
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, session: aiohttp.ClientSession, endpoint: str) -> str:
        body = _encode({"name": self._user, "password": self._password})
        status, data = await self._post(session, endpoint, "/v3/auth/authenticate", body, {}, None)
        if status == 200:
            return str(_decode(_auth_dec, data, "authenticate").token)
        err = _answer_error(status, data, endpoint)
        if err.code == _FAILED_PRECONDITION and "not enabled" in str(err):
            return ""  # auth is off on the server: send no token
        if _unavailable_answer(err):
            raise _EndpointDown(endpoint, str(err))
        raise err

    def _auth_failed(self) -> None:
        self._token = None

    # -- KV ---------------------------------------------------------------------------------

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        revision: int | None = None,
        limit: int | None = None,
        keys_only: bool = False,
        range_end: bytes | None = None,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> RangeResult:
        k = _key_bytes(key)
        body: dict[str, Any] = {"key": k}
        if prefix:
            body["range_end"] = prefix_range_end(k)
        elif range_end is not None:
            body["range_end"] = range_end
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if serializable:
            body["serializable"] = True
        msg: _RangeMsg = _decode(
            _range_dec, await self._call("/v3/kv/range", body, timeout=timeout), "range"
        )
        kvs = [m.to_kv() for m in msg.kvs]
        return RangeResult(msg.header.revision, kvs, msg.more, msg.count)

    async def get(self, key: str) -> KV | None:
        res = await self.range(key)
        return res.kvs[0] if res.kvs else None

    async def range_all(
        self, prefix: str, *, page_size: int = 1000, bulk_min: int = GRPC_BULK_MIN
    ) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` in key order, paginated; all pages read at the revision of
        the first page, so writes made during the read do not leak in (etcd.md §7). When the
        first page says ``bulk_min`` keys or more follow, the rest is read over gRPC if it can
        be (``_range_grpc``), else over the gateway as the first page was."""
        return await self._range_prefix(prefix, _make_kv, page_size, bulk_min)

    async def range_rows(
        self, prefix: str, *, page_size: int = 1000, bulk_min: int = GRPC_BULK_MIN
    ) -> tuple[int, list[Row]]:
        """``range_all`` as ``(key, value, mod_revision, create_revision)`` rows, what a full
        config load takes: one tuple per key, not a KV and then a KeyValue (100k keys: ~0.5 s
        less, issue #17)."""
        return await self._range_prefix(prefix, _make_row, page_size, bulk_min)

    async def _range_prefix(
        self, prefix: str, make: MakeItem[T], page_size: int, bulk_min: int
    ) -> tuple[int, list[T]]:
        start = _key_bytes(prefix)
        end = prefix_range_end(start)
        revision = 0
        out: list[T] = []
        while True:
            body: dict[str, Any] = {"key": start, "range_end": end, "limit": str(page_size)}
            if revision:
                body["revision"] = str(revision)
            msg: _RangeMsg = _decode(_range_dec, await self._call("/v3/kv/range", body), "range")
            first = not revision
            if first:
                revision = msg.header.revision
            out.extend(
                make(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)
                for m in msg.kvs
            )
            if not msg.more or not msg.kvs:
                return revision, out
            start = msg.kvs[-1].key + b"\x00"
            if first and msg.count - len(msg.kvs) >= bulk_min:
                rest = await self._range_grpc(start, end, revision, make)
                if rest is not None:
                    out.extend(rest)
                    return revision, out

    async def _range_grpc(
        self, start: bytes, end: bytes, revision: int, make: MakeItem[T]
    ) -> list[T] | None:
        """``[start, end)`` at ``revision`` through etcd's gRPC API on the endpoint that just
        answered (``tollway.config.etcd_grpc``: ~10x less work for etcd than its gateway), in a
        thread. None when that cannot be used (TLS that does not verify its peer, which gRPC
        cannot express; gRPC not reachable there, say a gateway-only proxy; any error): the
        caller reads on over the gateway, at the same revision."""
        if self._tls is not None and (
            not self._tls.verify or (self._tls.cert and not self._tls.key)
        ):
            return None
        endpoint = self.endpoint
        try:
            headers = await self._auth_headers(self._get_session(), endpoint)
            from tollway.config import etcd_grpc

            rest = await asyncio.get_running_loop().run_in_executor(
                None,
                etcd_grpc.range_rest,
                endpoint,
                self._tls,
                headers.get("Authorization"),
                (start, end, revision),
                self.timeout,
                make,
            )
            log.info("etcd: read %d keys over gRPC from %s", len(rest), endpoint)
            return rest
        except Exception as e:  # every failure means: read over the gateway
            log.info("etcd: gRPC range at %s failed (%s); reading over the gateway", endpoint, e)
            return None

    async def put(
        self, key: str, value: bytes, *, lease: int | None = None, prev_kv: bool = False
    ) -> tuple[int, KV | None]:
        body: dict[str, Any] = {"key": _key_bytes(key), "value": value}
        if lease:
            body["lease"] = str(lease)
        if prev_kv:
            body["prev_kv"] = True
        msg: _PutMsg = _decode(_put_dec, await self._call("/v3/kv/put", body), "put")
        prev = msg.prev_kv.to_kv() if msg.prev_kv is not None else None
        return msg.header.revision, prev

    async def delete(
        self, key: str, *, prefix: bool = False, prev_kv: bool = False
    ) -> tuple[int, int]:
        """Returns (revision, deleted count). ``prev_kv`` is passed to etcd for parity with its
        API; the previous values are not returned."""
        k = _key_bytes(key)
        body: dict[str, Any] = {"key": k}
        if prefix:
            body["range_end"] = prefix_range_end(k)
        if prev_kv:
            body["prev_kv"] = True
        msg: _DeleteMsg = _decode(_delete_dec, await self._call("/v3/kv/deleterange", body), "del")
        return msg.header.revision, msg.deleted

    async def put_if(
        self, key: str, value: bytes, *, mod_revision: int, lease: int | None = None
    ) -> tuple[bool, int]:
        """Compare-and-swap: put only if the key's mod_revision equals ``mod_revision``
        (0: the key must not exist; etcd compares a missing key as mod_revision 0)."""
        k = _key_bytes(key)
        put: dict[str, Any] = {"key": k, "value": value}
        if lease:
            put["lease"] = str(lease)
        body = {
            "compare": [
                {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
            ],
            "success": [{"request_put": put}],
        }
        msg: _TxnMsg = _decode(_txn_dec, await self._call("/v3/kv/txn", body), "txn")
        return msg.succeeded, msg.header.revision

    async def lease_grant(self, ttl: int) -> int:
        msg: _LeaseMsg = _decode(
            _lease_dec, await self._call("/v3/lease/grant", {"TTL": str(ttl)}), "lease grant"
        )
        if msg.error:
            raise EtcdError(f"etcd lease grant: {msg.error}")
        return int(msg.ID)

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def version(self) -> dict[str, Any]:
        session = self._get_session()
        reasons: list[str] = []
        for endpoint in self._order():
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout)
                async with session.get(endpoint + "/version", timeout=timeout) as resp:
                    data = await resp.read()
                    status = resp.status
            except _TRANSPORT_ERRORS as e:
                self._mark_failed(endpoint)
                reasons.append(f"{endpoint}: {_describe(e)}")
                continue
            except aiohttp.ClientError as e:
                raise EtcdError(f"etcd {endpoint}: {_describe(e)}") from e
            if status != 200:
                raise _answer_error(status, data, endpoint)
            self._mark_ok(endpoint)
            result: dict[str, Any] = _decode(msgspec.json.Decoder(dict), data, "version")
            return result
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(reasons))

    # -- watch ------------------------------------------------------------------------------

    def watch(
        self,
        prefix: str,
        start_revision: int,
        *,
        progress_notify: bool = True,
        idle_timeout: float | None = None,
    ) -> Watch:
        """Watch every key under ``prefix`` from ``start_revision``. Iterate the result; close it
        (``aclose()`` or ``async with``) to cancel: over HTTP a watch is cancelled by closing
        its stream (etcd.md §6, gotcha 7). ``idle_timeout``: end the iteration (normally) when
        no line arrived for that long; the caller re-watches, like APISIX's watch_timeout."""
        k = _key_bytes(prefix)
        request: dict[str, Any] = {
            "key": k,
            "range_end": prefix_range_end(k),
            "start_revision": str(start_revision),
        }
        if progress_notify:
            request["progress_notify"] = True
        return Watch(self, _encode({"create_request": request}), idle_timeout)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._owner is not None:
            if self._owner == (os.getpid(), asyncio.get_running_loop()):
                await session.close()


class Watch:
    """One watch stream: an async iterator of WatchResponse. After a ``canceled`` response the
    stream is closed (etcd leaves it open) and the iteration ends."""

    def __init__(self, client: EtcdClient, payload: bytes, idle_timeout: float | None) -> None:
        self._client = client
        self._payload = payload
        self._idle_timeout = idle_timeout
        self._resp: aiohttp.ClientResponse | None = None
        self._buf = bytearray()
        self._scan = 0
        self._first: WatchResponse | None = None
        self._done = False
        self.endpoint: str | None = None
        self.timed_out = False

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._done = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()  # drops the connection: etcd cancels the watcher

    async def __anext__(self) -> WatchResponse:
        if self._done:
            raise StopAsyncIteration
        if self._resp is None:
            await self._open()
        if self._first is not None:
            out, self._first = self._first, None
        else:
            line = await self._next_line()
            if line is None:
                await self.aclose()
                raise StopAsyncIteration
            out = self._parse(line)
        if out.canceled:
            await self.aclose()
        return out

    async def _open(self) -> None:
        client = self._client
        session = client._get_session()
        reasons: list[str] = []
        for endpoint in client._order():
            try:
                first = await self._open_endpoint(session, endpoint)
            except BaseException as e:
                self._drop_stream()
                if not isinstance(e, _EndpointDown):
                    self._done = True
                    raise

                client._mark_failed(endpoint)
                reasons.append(str(e))
                continue
            client._mark_ok(endpoint)
            self._first = first
            return
        self._done = True
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(reasons))

    async def _open_endpoint(self, session: aiohttp.ClientSession, endpoint: str) -> WatchResponse:
        client = self._client
        # No read timeout on the stream itself (an idle watch is silent for up to the server's
        # progress interval); connecting and the response headers are bounded.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=client.timeout, sock_connect=client.timeout
        )
        for attempt in range(2):
            headers = await client._auth_headers(session, endpoint)
            self.endpoint = endpoint
            try:
                async with asyncio.timeout(client.timeout):
                    resp = await session.post(
                        endpoint + "/v3/watch", data=self._payload, headers=headers, timeout=timeout
                    )
            except _TRANSPORT_ERRORS as e:
                raise _EndpointDown(endpoint, _describe(e)) from e
            except aiohttp.ClientError as e:
                raise EtcdError(f"etcd {endpoint}: {_describe(e)}") from e
            if resp.status != 200:
                data = await self._read_error_body(resp, endpoint)
                err = _answer_error(resp.status, data, endpoint)
                if _unavailable_answer(err):
                    raise _EndpointDown(endpoint, str(err))
                raise err
            self._resp = resp
            # Read the created line here: an expired token shows up as created+canceled.
            try:
                line = await self._next_line(bounded=True)
            except EtcdUnavailable as e:
                raise _EndpointDown(endpoint, str(e)) from e
            if line is None:
                raise _EndpointDown(endpoint, "watch stream closed before it was created")
            first = self._parse(line)
            refused = first.canceled and _token_refused(first.cancel_reason)
            if refused and client._user is not None and attempt == 0:
                client._auth_failed()
                self._drop_stream()
                continue
            return first
        raise AssertionError("unreachable")

    async def _read_error_body(self, resp: aiohttp.ClientResponse, endpoint: str) -> bytes:
        try:
            async with asyncio.timeout(self._client.timeout):
                return await resp.read()
        except _TRANSPORT_ERRORS as e:
            raise _EndpointDown(endpoint, _describe(e)) from e
        finally:
            resp.release()

    def _drop_stream(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
        self._buf.clear()
        self._scan = 0

    async def _next_line(self, *, bounded: bool = False) -> bytes | None:
        """The next non-empty line, or None at end of stream or after ``idle_timeout``.
        Lines are split here rather than with aiohttp's readline, which caps line length."""
        assert self._resp is not None
        buf = self._buf
        limit = self._client.timeout if bounded else self._idle_timeout
        while True:
            i = buf.find(b"\n", self._scan)
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 1]
                self._scan = 0
                if line.strip():
                    return line
                continue
            self._scan = len(buf)
            try:
                if limit is None:
                    chunk = await self._resp.content.readany()
                else:
                    async with asyncio.timeout(limit):
                        chunk = await self._resp.content.readany()
            except TimeoutError as e:
                if bounded:
                    raise EtcdUnavailable(f"etcd {self.endpoint}: watch not created in time") from e
                self.timed_out = True
                return None
            except _TRANSPORT_ERRORS as e:
                self._client._mark_failed(self.endpoint or "")
                raise EtcdUnavailable(f"etcd {self.endpoint}: watch: {_describe(e)}") from e
            if not chunk:
                if buf.strip():
                    line = bytes(buf)
                    buf.clear()
                    self._scan = 0
                    return line
                return None
            buf += chunk

    def _parse(self, line: bytes) -> WatchResponse:
        msg: _WatchLineMsg = _decode(_watch_dec, line, "watch")
        if msg.error is not None:
            e = msg.error
            text = f"etcd {self.endpoint}: watch: {e.message}"
            if e.grpc_code in (_UNAVAILABLE, _DEADLINE_EXCEEDED):
                raise EtcdUnavailable(text, code=e.grpc_code, status=e.http_code)
            raise EtcdError(text, code=e.grpc_code, status=e.http_code)
        if msg.result is None:
            raise EtcdError(f"etcd {self.endpoint}: watch: unexpected line {line[:200]!r}")
        return _watch_response(msg.result)
