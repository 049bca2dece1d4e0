"""Tollway: an API gateway compatible with Apache APISIX's config model, in Python."""

__version__ = "0.1.0"
__all__ = ["__version__"]
