"""SNI lookup in the certificate table (APISIX radixtree_sni's rules)."""

from __future__ import annotations

import ssl

from tollway.proxy.tls import CertTable


def test_exact_names_then_one_label_wildcards() -> None:
    exact, wild, longer = (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for _ in range(3))
    table = CertTable()
    table.exact["test2.com"] = exact
    table.wildcard = [(".api.test2.com", longer), (".test2.com", wild)]
    assert table.find("test2.com") is exact
    assert table.find("a.test2.com") is wild
    assert table.find("x.api.test2.com") is longer
    # radixtree-sni.t TEST 11/18: "*.test2.com" does not cover aa.bb.test2.com
    assert table.find("aa.bb.test2.com") is None
    assert table.find("other.com") is None
