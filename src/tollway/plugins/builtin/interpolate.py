"""``$var`` interpolation used by several plugins (APISIX's core.utils.resolve_var)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_VAR = re.compile(r"(\\?)\$(\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def compile_template(text: str) -> Callable[[Callable[[str], Any]], str]:
    """Split once into literals and variable names; rendering is a join."""
    parts: list[str | tuple[str]] = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.group(1):  # "\$x" is not a variable; the text stays as written, backslash
            # included (APISIX's pattern only skips it: (?<!\\)\$)
            parts.append(text[pos : m.end()])
            pos = m.end()
            continue
        parts.append(text[pos : m.start()])
        parts.append((m.group(3) or m.group(4),))
        pos = m.end()
    parts.append(text[pos:])
    if len(parts) == 1:
        const = text

        def render_const(var: Callable[[str], Any]) -> str:
            return const

        return render_const

    def render(var: Callable[[str], Any]) -> str:
        out = []
        for p in parts:
            if isinstance(p, tuple):
                v = var(p[0])
                out.append("" if v is None else str(v))
            else:
                out.append(p)
        return "".join(out)

    return render
