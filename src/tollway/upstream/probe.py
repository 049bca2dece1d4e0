"""Active probes: one connection per probe, the result as an ``Outcome``.

Matches lua-resty-healthcheck ``run_single_check``: a connect or TLS failure is a tcp failure, a
timeout on any step is a timeout, ``tcp`` checks stop after the connect, ``http``/``https`` send
``<method> <path> HTTP/1.1`` with ``Connection: close`` and judge the status line only (a line
that is not a status line counts as an http failure, status 0).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

from tollway.model import ActiveCheck
from tollway.upstream.health import Target

_STATUS_LINE = re.compile(rb"^HTTP/\d+\.\d+\s+(\d+)")
_MIN_TIMEOUT = 0.001


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    type: str
    timeout: float
    method: str
    path: str
    headers: str  # "Name: value\r\n" lines from req_headers
    body: bytes
    ssl_ctx: ssl.SSLContext | None

    @staticmethod
    def of(a: ActiveCheck) -> ProbeSpec:
        headers = "".join(f"{h.strip()}\r\n" for h in a.req_headers or () if h.strip())
        ctx = None
        if a.type == "https":
            ctx = ssl.create_default_context()
            if not a.https_verify_certificate:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return ProbeSpec(
            a.type,
            max(a.timeout, _MIN_TIMEOUT),
            a.http_method,
            a.http_path,
            headers,
            a.http_req_body.encode("utf-8"),
            ctx,
        )

    def request(self, host: str) -> bytes:
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nConnection: close\r\n{self.headers}"
            f"Host: {host}\r\n"
        )
        if self.body:
            head += f"Content-Length: {len(self.body)}\r\n"
        return head.encode("latin-1") + b"\r\n" + self.body


def _server_name(host: str) -> str:
    """SNI from a Host value: without the port and the IPv6 brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.partition(":")[0]


def parse_status(line: bytes) -> int:
    m = _STATUS_LINE.match(line)
    return int(m.group(1)) if m else 0


async def probe(spec: ProbeSpec, target: Target) -> tuple[str, int]:
    """Probe ``target`` once: ``(outcome, status)`` for ``Checker.report``."""
    sni = _server_name(target.host_header) if spec.ssl_ctx is not None else None
    try:
        async with asyncio.timeout(spec.timeout):
            reader, writer = await asyncio.open_connection(
                target.ip, target.port, ssl=spec.ssl_ctx, server_hostname=sni
            )
    except TimeoutError:
        return "timeout", 0
    except (OSError, ssl.SSLError, ValueError):
        return "tcp", 0
    try:
        if spec.type == "tcp":
            return "success", 0
        writer.write(spec.request(target.host_header))
        async with asyncio.timeout(spec.timeout):
            line = await reader.readline()
    except TimeoutError:
        return "timeout", 0
    except (OSError, ValueError):
        return "tcp", 0
    finally:
        writer.transport.abort()
    if not line:
        return "tcp", 0  # closed before a status line: lua's receive() error
    return "http", parse_status(line)
