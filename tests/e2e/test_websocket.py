"""WebSocket upgrades become a two-way tunnel only when the route allows it (issue #2)."""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import Upstream


@pytest.fixture
def gw(tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    text = f"""
routes:
  - {{id: ws, uri: /ws, enable_websocket: true, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
  - {{id: nows, uri: /ws-off, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
#END
"""
    with Gateway(tmp_path, apisix_yaml=text) as g:
        yield g


def handshake(path: str, upgrade: bytes = b"websocket") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nUpgrade: "
        + upgrade
        + b"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


def read_head(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_websocket_is_tunnelled(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(handshake("/ws"))
        head = read_head(s)
        assert head.startswith(b"HTTP/1.1 101"), head
        for word in ("one", "two"):
            s.sendall(frame(word))
            data = s.recv(4096)
            assert data[2:] == f"echo:{word}".encode()


def test_websocket_refused_without_enable_websocket(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(handshake("/ws-off"))
        head = read_head(s)
        assert not head.startswith(b"HTTP/1.1 101")


def test_h2c_upgrade_is_not_tunnelled(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(handshake("/ws", b"h2c"))
        head = read_head(s)
        assert not head.startswith(b"HTTP/1.1 101"), head


def test_idle_tunnel_is_closed_after_read_timeout(tmp_path: Path, upstream: Upstream) -> None:
    text = f"""
routes:
  - id: ws
    uri: /ws
    enable_websocket: true
    timeout: {{connect: 1, send: 1, read: 0.5}}
    upstream: {{nodes: {{"{upstream.addr}": 1}}}}
#END
"""
    with (
        Gateway(tmp_path, apisix_yaml=text) as g,
        socket.create_connection(("127.0.0.1", g.port), timeout=5) as s,
    ):
        s.sendall(handshake("/ws"))
        assert read_head(s).startswith(b"HTTP/1.1 101")
        s.sendall(frame("hi"))
        assert s.recv(4096)[2:] == b"echo:hi"
        assert s.recv(4096) == b""  # closed by the gateway once idle
