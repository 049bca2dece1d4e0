"""HTTP/2 (RFC 9113) as both of the gateway's sides speak it: the frame codec (``frames``), one
connection's state (``connection``), the events it reports (``events``). Pure: no asyncio, no
sockets; ``proxy.h2`` (towards clients) and ``upstream.h2conn`` (towards gRPC upstreams) feed
it bytes and write what it queues."""
