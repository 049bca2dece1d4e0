"""The plugin kit's matching API: lua-resty-expr ``vars`` expressions, PCRE-style regexes
(APISIX's ``ngx.re`` options, run on a linear-time engine) and IP/CIDR sets.

Plugins import these from here, never from ``tollway.expr`` / ``tollway.regex``: this module is
the contract, the modules behind it may change. Compile once per conf (``PerConf``), evaluate
per request: ``Expr.eval(ctx.var)``, ``Regex.search(text)``, ``IpMatcher.match(addr)``.
"""

from __future__ import annotations

from tollway.expr import Expr, ExprError, IpMatcher, compile_expr
from tollway.regex import Regex, RegexError, Replacement, compile_regex, compile_replacement

__all__ = [
    "Expr",
    "ExprError",
    "IpMatcher",
    "Regex",
    "RegexError",
    "Replacement",
    "compile_expr",
    "compile_regex",
    "compile_replacement",
]
