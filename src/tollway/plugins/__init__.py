"""The plugin kit, the registry and the built-in plugins.

Plugins see only :mod:`tollway.plugins.kit` (the context API), never the server internals.
"""
