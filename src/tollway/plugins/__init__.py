"""The plugin kit, the registry and the built-in plugins.

Plugins see only :mod:`tollway.plugins.kit` (the context API), never the server internals.
"""

# The kit first: it re-exports modules (batching, logentry) that import it back.
from tollway.plugins import kit as kit
