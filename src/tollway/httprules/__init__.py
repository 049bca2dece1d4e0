"""Pure HTTP/1.1 rules: values and bytes in, values and bytes out; no asyncio, no sockets.

Both sides of the gateway use them (``proxy`` for clients, ``upstream`` for the upstream
connection), so they import nothing of either. Each rule cites the RFC section it follows and is
unit-tested without a socket (tests/unit/httprules).
"""
