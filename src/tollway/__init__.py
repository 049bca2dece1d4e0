"""Tollway: an API gateway compatible with Apache APISIX's config model, in Python."""

__version__ = "0.1.0"
# The APISIX release whose Admin API and behaviour Tollway follows. The Admin API announces it
# in ``Server: APISIX/<version>``: APISIX clients (ADC, the ingress controller) read the version
# from that header and turn features off below the one they need.
APISIX_VERSION = "3.18.0"
__all__ = ["APISIX_VERSION", "__version__"]

# The compiled build of the request path, when it is built and matches the source (native.py).
from tollway import native  # noqa: E402

native.install()
