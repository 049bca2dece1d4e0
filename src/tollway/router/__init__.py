"""The HTTP router: APISIX's radixtree route matching, pure (no I/O, no event loop).

Build with :func:`build_router` (or :class:`RouterBuilder` in chunks), match with
``Router.match(request_view)``, apply config changes with ``Router.update``. Paths are
normalised by :func:`normalize_path` before matching. Semantics: apisix.md §2.
"""

from tollway.router.engine import KINDS, Router, RouterBuilder, build_router, compile_check
from tollway.router.path import normalize_path, servlet_path
from tollway.router.spec import Match, RequestView, RouteSpec

__all__ = [
    "KINDS",
    "Match",
    "RequestView",
    "RouteSpec",
    "Router",
    "RouterBuilder",
    "build_router",
    "compile_check",
    "normalize_path",
    "servlet_path",
]
