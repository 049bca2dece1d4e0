"""Request path normalisation: the raw request-target path to the ``uri`` routes match against.

Invariant: the result starts with ``/``, has no ``%`` escapes left undecoded, no empty, ``.`` or
``..`` segments, and never climbs above ``/``; None means "answer 400".

Policy (nginx as configured by APISIX, which is what ``ngx.var.uri`` holds):

* ``%XX`` escapes are decoded first, including ``%2F``, which becomes a real ``/`` before matching
  (APISIX's default; ``match_uri_encoded_slash`` is not supported). Decoded bytes must be UTF-8:
  invalid or overlong sequences (``%ff``, ``%c3%28``, ``%c0%ae``) are invalid, never a 5xx and
  never a second spelling of a protected path (RFC 3629 §3: overlong forms must not be decoded).
* Then ``//`` runs collapse to ``/`` (nginx ``merge_slashes on``) and dot segments are removed as in
  RFC 3986 §5.2.4, so ``%2e%2e`` counts as ``..``. A ``..`` that would climb above the root is
  invalid, as nginx answers it with 400.
* A ``%`` not followed by two hex digits, a NUL byte (raw or ``%00``), bytes that are not UTF-8, a
  ``..`` above the root, or a path that does not start with ``/`` (``*``, absolute-form left to
  the caller) is invalid: None.

``raw_path`` is the request-target bytes as a ``str`` decoded with latin-1 (lossless; raw non-ASCII
bytes are then read as UTF-8 like escaped ones). A string holding characters above U+00FF cannot
come from latin-1, so it is taken as text and encoded as UTF-8 first.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

__all__ = ["normalize_path", "servlet_path"]

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _decode(raw_path: str) -> str | None:
    try:
        data = raw_path.encode("latin-1")
    except UnicodeEncodeError:
        data = raw_path.encode("utf-8", "surrogateescape")
    if _BAD_ESCAPE.search(data):
        return None
    decoded = unquote_to_bytes(data)
    if b"\x00" in decoded:
        return None
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _remove_dot_segments(path: str) -> str | None:
    """RFC 3986 §5.2.4 on a path that starts with "/", with empty segments merged; None for a
    ``..`` above the root (nginx: 400)."""
    parts = path.split("/")
    last = len(parts) - 1
    stack: list[str] = []
    trailing = False
    for i in range(1, last + 1):
        seg = parts[i]
        if seg == "" or seg == ".":
            trailing = i == last
        elif seg == "..":
            if not stack:
                return None
            stack.pop()
            trailing = i == last
        else:
            stack.append(seg)
            trailing = False
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


def normalize_path(raw_path: str) -> str | None:
    """Decode and normalise a raw request path (no query string); None when invalid (400)."""
    if not raw_path or raw_path[0] != "/" or "\x00" in raw_path:
        return None
    if "%" in raw_path or not raw_path.isascii():
        decoded = _decode(raw_path)
        if decoded is None:
            return None
    elif "//" not in raw_path and "/." not in raw_path:
        return raw_path  # the common case: nothing to decode or resolve
    else:
        decoded = raw_path
    if "//" not in decoded and "/." not in decoded:
        return decoded
    return _remove_dot_segments(decoded)


def servlet_path(path: str) -> str | None:
    """``apisix.normalize_uri_like_servlet``: the path a Java servlet container matches, from a
    path :func:`normalize_path` already produced; None when invalid (400).

    Path parameters (``;...`` up to the next ``/``) are cut from every segment (Servlet spec
    3.5.2), as APISIX does; a segment that is then ``.``, ``..``, ``%2e`` or ``%2e%2e`` (a
    double-encoded dot), or an empty one before the last, is refused: those are the spellings
    that reach a protected path through Tomcat (``/public/..;/private``). Beyond APISIX, a
    backslash is refused too: Tomcat rejects it by default and IIS reads it as ``/``.
    """
    if "\\" in path:
        return None
    if ";" not in path:
        return path
    segments = path.split("/")
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        cut = seg.find(";")
        if cut < 0:
            continue
        seg = seg[:cut]
        if seg in (".", "..") or (not seg and i < last) or seg.lower() in ("%2e", "%2e%2e"):
            return None
        segments[i] = seg
    return "/".join(segments)
