"""The Compiler box of the architecture: config objects -> one immutable compiled runtime.

* ``compiled``: the values a request reads (``Runtime``, ``CompiledRoute``, ``CompiledUpstream``).
* ``compiler``: ``Compiler``, which builds and publishes them (full or incremental).
* ``consumers``: the consumer index. ``certs``: the SNI certificate table.
"""

from tollway.runtime.compiled import (
    DEFAULT_TIMEOUTS,
    CompiledRoute,
    CompiledUpstream,
    Runtime,
    Timeouts,
)
from tollway.runtime.compiler import Compiler
from tollway.runtime.consumers import ConsumerIndex

__all__ = [
    "DEFAULT_TIMEOUTS",
    "CompiledRoute",
    "CompiledUpstream",
    "Compiler",
    "ConsumerIndex",
    "Runtime",
    "Timeouts",
]
