from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.cors import Conf, Cors, _compiled, cors_headers
from tollway.plugins.registry import load_registry


def headers(
    raw: dict[str, Any], origin: str | None, req_headers: str | None = None
) -> dict[str, str]:
    conf = msgspec.convert(raw, Conf)
    return dict(cors_headers(conf, _compiled(conf), origin, req_headers))


def test_schema_defaults() -> None:
    conf = load_registry().decode_conf("cors", {})
    assert (conf.allow_origins, conf.allow_methods, conf.allow_headers) == ("*", "*", "*")
    assert conf.max_age == 5 and conf.allow_credential is False and conf.expose_headers is None


@pytest.mark.parametrize(
    "raw",
    [
        {"allow_credential": True},
        {
            "allow_credential": True,
            "allow_origins": "http://a.com",
            "allow_methods": "GET",
            "allow_headers": "*",
        },
        {"allow_origins": "not-an-origin"},
        {"allow_origins_by_regex": []},
        {"allow_origins_by_regex": ["("]},
        {"allow_origins_by_regex": ["a", "a"]},
        {"max_age": "5"},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="failed to check the configuration of plugin cors err"):
        load_registry().decode_conf("cors", raw)


def test_credential_error_message() -> None:
    with pytest.raises(
        ConfigError, match="you can not set '\\*' for other option when 'allow_credential' is true"
    ):
        load_registry().decode_conf("cors", {"allow_credential": True})


def test_allowed_with_credentials_and_explicit_values() -> None:
    raw = {
        "allow_origins": "http://a.com,http://b.com",
        "allow_methods": "GET",
        "allow_headers": "X-A",
        "expose_headers": "X-E",
        "allow_credential": True,
    }
    h = headers(raw, "http://b.com")
    assert h == {
        "Vary": "Origin",
        "Access-Control-Allow-Origin": "http://b.com",
        "Access-Control-Allow-Methods": "GET",
        "Access-Control-Max-Age": "5",
        "Access-Control-Expose-Headers": "X-E",
        "Access-Control-Allow-Headers": "X-A",
        "Access-Control-Allow-Credentials": "true",
    }
    assert headers(raw, "http://c.com") == {"Vary": "Origin"}
    assert headers(raw, None) == {"Vary": "Origin"}


def test_single_origin_sent_only_when_it_matches() -> None:
    raw = {"allow_origins": "http://a.com"}
    assert headers(raw, "http://a.com")["Access-Control-Allow-Origin"] == "http://a.com"
    assert "Access-Control-Allow-Origin" not in headers(raw, "http://b.com")


def test_star_and_double_star() -> None:
    assert headers({}, None)["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in headers({}, "http://x")
    h = headers({"allow_origins": "**", "allow_headers": "**"}, "http://x", "X-Y")
    assert h["Access-Control-Allow-Origin"] == "http://x"
    assert h["Access-Control-Allow-Headers"] == "X-Y"


def test_regex_wins_over_allow_origins() -> None:
    raw = {"allow_origins": "http://a.com", "allow_origins_by_regex": [r".*\.test\.com$"]}
    assert headers(raw, "http://x.test.com")["Access-Control-Allow-Origin"] == "http://x.test.com"
    assert "Access-Control-Allow-Origin" not in headers(raw, "http://a.com")


def test_timing_allow_origin() -> None:
    h = headers({"timing_allow_origins": "http://a.com"}, "http://a.com")
    assert h["Timing-Allow-Origin"] == "http://a.com"
    assert "Timing-Allow-Origin" not in headers(
        {"timing_allow_origins": "http://a.com"}, "http://b"
    )


def test_options_answers_200_with_headers_and_other_methods_continue() -> None:
    plugin, conf = Cors(), msgspec.convert({}, Conf)
    res = plugin.rewrite(conf, make_ctx(method="OPTIONS"))
    assert res is not None and res[0] == 200 and res[1] is None
    assert res[2]["Access-Control-Allow-Origin"] == "*"  # type: ignore[misc]
    ctx = make_ctx(headers={"Origin": "http://o"})
    assert plugin.rewrite(conf, ctx) is None
    ctx.resp_headers = [("Vary", "Accept")]
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Access-Control-Allow-Origin") == "*"


def test_allow_origins_by_metadata() -> None:
    # APISIX cors doc: plugin_metadata/cors names origin lists a route picks by key.
    meta = {"key_1": "https://domain.com", "key_2": "https://a.com,https://b.com"}
    raw = {"allow_origins_by_metadata": ["key_1", "key_2"]}
    conf = msgspec.convert(raw, Conf)

    def allow(origin: str, m: dict[str, str] | None = meta) -> str | None:
        return dict(cors_headers(conf, _compiled(conf), origin, None, m)).get(
            "Access-Control-Allow-Origin"
        )

    assert allow("https://domain.com") == "https://domain.com"
    assert allow("https://b.com") == "https://b.com"
    assert allow("https://evil.com") is None
    assert allow("https://domain.com", None) is None  # no metadata: nothing listed
    plugin = Cors()
    assert plugin.metadata_schema is not None
    decoded = msgspec.convert({"allow_origins": meta}, plugin.metadata_schema)
    plugin.set_metadata(decoded)
    ctx = make_ctx()
    assert plugin._meta_origins(ctx) == meta  # no runtime: the latest metadata

    class Source:  # the runtime the request started with holds its own metadata
        plugin_metadata: dict[str, object] = {}

    ctx.upstream_source = Source()  # type: ignore[assignment]
    assert plugin._meta_origins(ctx) is None
    Source.plugin_metadata = {"cors": decoded}
    assert plugin._meta_origins(ctx) == meta
