"""HTTP/2 frames (RFC 9113 4 and 6): the 9-octet header, error codes, settings, and building
frames as bytes. Pure: no asyncio, no sockets, no state.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client connection preface (3.4)

# Frame types (6.1-6.10)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 1, 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 4, 5, 6

MAX_WINDOW = (1 << 31) - 1  # 6.9.1
MIN_FRAME_SIZE = 16384
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1

HEAD = struct.Struct(">IBI")  # length (24 bits) and type in one word, flags, stream id
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_SETTING = struct.Struct(">HI")


class ErrorCode(IntEnum):
    """RFC 9113 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def code_of(value: int) -> ErrorCode | int:
    """An error code as received: unknown codes stay ints (7: they MUST NOT trigger special
    behaviour)."""
    try:
        return ErrorCode(value)
    except ValueError:
        return value


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload) << 8 | ftype, flags, sid) + payload


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, _U32.pack(code))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, _U32.pack(increment))


def goaway(last_sid: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_sid, code))


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload (length already checked)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def parse_u32(payload: bytes) -> int:
    """RST_STREAM's error code, WINDOW_UPDATE's increment (its reserved bit cleared)."""
    value: int = _U32.unpack(payload)[0]
    return value


def parse_goaway(payload: bytes) -> tuple[int, int]:
    """Last stream id (reserved bit cleared) and error code."""
    last, code = _GOAWAY.unpack_from(payload)
    return last & MAX_WINDOW, code


def header_frames(sid: int, block: bytes, end_stream: bool, max_size: int) -> bytes:
    """A header block as HEADERS, then CONTINUATION frames past ``max_size`` (6.10)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_size:
        return frame(HEADERS, flags | END_HEADERS, sid, block)
    chunks = [block[i : i + max_size] for i in range(0, len(block), max_size)]
    out = [frame(HEADERS, flags, sid, chunks[0])]
    for chunk in chunks[1:-1]:
        out.append(frame(CONTINUATION, 0, sid, chunk))
    out.append(frame(CONTINUATION, END_HEADERS, sid, chunks[-1]))
    return b"".join(out)


def unpad(flags: int, payload: bytes) -> bytes | None:
    """A DATA or HEADERS payload without its padding (6.1); None when the padding is longer
    than the payload (a connection error PROTOCOL_ERROR)."""
    if not flags & PADDED:
        return payload
    if not payload:
        return None
    pad = payload[0]
    if pad >= len(payload):
        return None
    return payload[1 : len(payload) - pad]
