"""hash_key_for: APISIX fetch_chash_hash_key."""

from __future__ import annotations

from typing import Any

from tollway.balancer import hash_key_for, resolve_vars

VARS: dict[str, Any] = {
    "uri": "/a",
    "arg_device_id": "42",
    "http_x_sessionid": "s-1",
    "cookie_sid": "c-9",
    "remote_port": 51000,
    "empty": "",
}


def var(name: str) -> Any:
    return VARS.get(name)


def key(hash_on: str, k: str | None, consumer: str | None = None) -> str:
    return hash_key_for(hash_on, k, var, consumer, "192.0.2.1")


def test_vars() -> None:
    assert key("vars", "uri") == "/a"
    assert key("vars", "arg_device_id") == "42"
    assert key("vars", "remote_port") == "51000"  # tostring


def test_header_name_is_lowered_and_dashes_become_underscores() -> None:
    assert key("header", "X-Sessionid") == "s-1"


def test_cookie() -> None:
    assert key("cookie", "sid") == "c-9"


def test_consumer() -> None:
    assert key("consumer", None, consumer="jack") == "jack"
    assert key("consumer", None) == "192.0.2.1"


def test_missing_value_falls_back_to_remote_addr() -> None:
    assert key("vars", "arg_nope") == "192.0.2.1"
    assert key("header", "X-Nope") == "192.0.2.1"
    assert key("cookie", "nope") == "192.0.2.1"
    assert key("vars", None) == "192.0.2.1"


def test_empty_string_is_a_key() -> None:
    assert key("vars", "empty") == ""


def test_vars_combinations() -> None:
    assert key("vars_combinations", "$http_x_sessionid-$arg_device_id") == "s-1-42"
    assert key("vars_combinations", "${uri}|${ arg_device_id }") == "/a|42"
    # one resolved, one missing: the missing one becomes "".
    assert key("vars_combinations", "$arg_nope-$uri") == "-/a"
    # none resolved: nil, so remote_addr.
    assert key("vars_combinations", "$arg_nope-$arg_nada") == "192.0.2.1"
    assert key("vars_combinations", "no-vars-here") == "192.0.2.1"


def test_resolve_vars_default_and_escape() -> None:
    assert resolve_vars("${arg_nope ?? anon}", var) == "anon"
    assert resolve_vars("\\$uri $uri", var) == "\\$uri /a"
    assert resolve_vars("$nothing", var) is None
