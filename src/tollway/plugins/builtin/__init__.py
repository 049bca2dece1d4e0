"""Built-in plugins, each a module exposing ``PLUGINS``."""
