"""What a peer's frames amount to, as ``Connection.receive_data`` reports them (one small object
each, dispatched on its type by the connection's owner)."""

from __future__ import annotations

from tollway.http2.frames import ErrorCode

Fields = list[tuple[bytes, bytes]]


class Event:
    __slots__ = ()


class RequestReceived(Event):
    """A client's request head opened stream ``stream_id`` (server side). ``ended``: it
    carried END_STREAM, and no StreamEnded follows for it (one event per bodiless request)."""

    __slots__ = ("ended", "headers", "stream_id")

    def __init__(self, stream_id: int, headers: Fields, ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.ended = ended


class ResponseReceived(RequestReceived):
    """The final response head of a stream (client side; 1xx heads are dropped). ``ended``:
    a StreamEnded follows it (unlike RequestReceived's)."""

    __slots__ = ()


class TrailersReceived(Event):
    """Trailers, which end the stream (RFC 9113 8.1): no StreamEnded follows."""

    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: Fields) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived(Event):
    """Body bytes; ``flow_controlled_length`` (padding included) is what the owner gives back
    to the windows with ``acknowledge_received_data`` once it took them. ``ended``: the frame
    carried END_STREAM, and no StreamEnded follows for it (one event for a unary call's
    message)."""

    __slots__ = ("data", "ended", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, size: int, ended: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = size
        self.ended = ended


class StreamEnded(Event):
    """The peer's END_STREAM after a response head that carried it (client side); a request
    head, DATA and trailers that end the stream say so themselves."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset(Event):
    """The stream is over: the peer's RST_STREAM (``remote_reset``), or ours after a stream
    error in the peer's frames (RFC 9113 5.4.2)."""

    __slots__ = ("error_code", "remote_reset", "stream_id")

    def __init__(self, stream_id: int, code: ErrorCode | int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = code
        self.remote_reset = remote


class StreamRefused(Event):
    """A stream opened past our SETTINGS_MAX_CONCURRENT_STREAMS, reset with REFUSED_STREAM
    (RFC 9113 5.1.2, 8.7: the client may retry it). Its header block was decoded (the HPACK
    table is the connection's)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class WindowUpdated(Event):
    __slots__ = ("delta", "stream_id")

    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged(Event):
    """The peer's SETTINGS (acknowledged already): identifier -> new value."""

    __slots__ = ("changed",)

    def __init__(self, changed: dict[int, int]) -> None:
        self.changed = changed


class ControlReceived(Event):
    """PING (answered already), PRIORITY, or a frame of an unknown type (ignored, RFC 9113
    5.5): cheap for the peer, counted by the owner's flood budget."""

    __slots__ = ("frame_type",)

    def __init__(self, frame_type: int) -> None:
        self.frame_type = frame_type


class ConnectionTerminated(Event):
    """The peer's GOAWAY: streams above ``last_stream_id`` were not processed (RFC 9113 6.8)."""

    __slots__ = ("error_code", "last_stream_id")

    def __init__(self, code: ErrorCode | int, last_stream_id: int) -> None:
        self.error_code = code
        self.last_stream_id = last_stream_id
