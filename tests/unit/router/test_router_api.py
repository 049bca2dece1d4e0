"""The public surface of tollway.router and tollway.expr is what the gateway relies on."""

from __future__ import annotations

import tollway.expr
import tollway.router


def test_router_public_names() -> None:
    assert sorted(tollway.router.__all__) == [
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
    assert tollway.router.KINDS == {
        "radixtree_host_uri",
        "radixtree_uri",
        "radixtree_uri_with_parameter",
    }


def test_expr_public_names() -> None:
    assert sorted(tollway.expr.__all__) == [
        "Expr",
        "ExprError",
        "IpMatcher",
        "compile_expr",
        "lua_tonumber",
    ]
