"""The dashboard's server side (tollway.admin.ui): pure parts."""

from __future__ import annotations

from tollway.admin.keys import AdminKey
from tollway.admin.ui import ASSETS, PUBLIC, Sessions, resolve_asset, role_of, summarize

KEYS = [AdminKey("a", "admin-key", "admin"), AdminKey("v", "viewer-key", "viewer")]


def test_role_of_a_key() -> None:
    assert role_of(KEYS, "admin-key", required=True) == "admin"
    assert role_of(KEYS, "viewer-key", required=True) == "viewer"
    assert role_of(KEYS, "viewer-key2", required=True) is None
    assert role_of(KEYS, "", required=True) is None
    assert role_of(KEYS, None, required=True) is None
    # admin_key_required: false (loopback only): everyone is admin, as the Admin API
    assert role_of(KEYS, None, required=False) == "admin"


def test_sessions_expire_and_are_capped() -> None:
    s = Sessions(ttl=10, cap=2)
    a = s.open("admin", now=0)
    assert s.role(a, now=9.9) == "admin"
    assert s.role(a, now=10) is None  # expired, and forgotten
    assert s.role(a, now=0) is None
    b, c, d = s.open("viewer", now=0), s.open("admin", now=0), s.open("admin", now=0)
    assert s.role(b, now=1) is None  # the oldest goes beyond the cap
    assert s.role(c, now=1) == "admin" and s.role(d, now=1) == "admin"
    s.close(c)
    assert s.role(c, now=1) is None
    assert s.role(None) is None and s.role("made-up") is None
    assert len({s.open("admin") for _ in range(50)}) == 50


def test_assets_resolve_inside_the_package_only() -> None:
    assert resolve_asset("") == ASSETS / "index.html"
    assert resolve_asset("app/app.js") == ASSETS / "app" / "app.js"
    for name in PUBLIC:
        assert resolve_asset(name) is not None, name  # shipped with the package
    for bad in ("../ui.py", "app/../../ui.py", "/etc/passwd", "app//app.js", ".hidden", "a\\b"):
        assert resolve_asset(bad) is None, bad
    assert resolve_asset("nothing.js") is None


def test_summarize_per_route_and_node() -> None:
    p = "apisix_"
    samples = [
        (p + "http_status", {"code": "200", "route": "r1", "node": "10.0.0.1"}, 5.0),
        (p + "http_status", {"code": "204", "route": "r1", "node": "10.0.0.2"}, 1.0),
        (p + "http_status", {"code": "502", "route": "r1", "node": "10.0.0.1"}, 2.0),
        (p + "http_status", {"code": "404", "route": "", "node": ""}, 3.0),
        (p + "http_latency_bucket", {"type": "request", "route": "r1", "le": "1.0"}, 4.0),
        (p + "http_latency_bucket", {"type": "request", "route": "r1", "le": "+Inf"}, 8.0),
        (p + "http_latency_bucket", {"type": "request", "route": "r1", "le": "10.0"}, 7.0),
        # another consumer's series of the same route: added bucket by bucket
        (p + "http_latency_bucket", {"type": "request", "route": "r1", "le": "1.0"}, 1.0),
        # upstream latency is not the request's
        (p + "http_latency_bucket", {"type": "upstream", "route": "r1", "le": "1.0"}, 99.0),
        ("other_http_status", {"code": "200", "route": "r1"}, 100.0),
    ]
    out = summarize(samples, p)
    assert out["routes"]["r1"] == {
        "status": {"2xx": 6.0, "5xx": 2.0},
        "buckets": [[1.0, 5.0], [10.0, 7.0], ["+Inf", 8.0]],
    }
    assert out["routes"][""] == {"status": {"4xx": 3.0}, "buckets": []}
    assert out["nodes"] == {"10.0.0.1": 7.0, "10.0.0.2": 1.0}
