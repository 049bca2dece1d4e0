"""GET-list filters and paging (APISIX v3_adapter.lua)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tollway.admin.listing import PageSizeError, filter_and_page, parse_filter


def node(i: int, created: int, **value: Any) -> dict[str, Any]:
    return {"key": f"/apisix/routes/{i}", "value": value, "createdIndex": created}


NODES = [
    node(1, 30, name="alpha", uri="/a", labels={"env": "prod"}, service_id="s1"),
    node(10, 10, name="beta", uris=["/b", "/c"], labels={"team": "x"}, service_id=1),
    node(2, 20, uri="/d", upstream_id="u"),
]


def ids(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["key"].rsplit("/", 1)[1] for n in nodes]


def test_no_args_keeps_key_order() -> None:
    total, out = filter_and_page(NODES, {}, exact_filter=True)
    assert total == 3 and ids(out) == ["1", "10", "2"]


def test_name_is_an_unanchored_regex_and_needs_a_name() -> None:
    assert ids(filter_and_page(NODES, {"name": "ph"}, exact_filter=False)[1]) == ["1"]
    assert ids(filter_and_page(NODES, {"name": ""}, exact_filter=False)[1]) == ["1", "10"]


def test_label_matches_the_key_only() -> None:
    assert ids(filter_and_page(NODES, {"label": "env"}, exact_filter=False)[1]) == ["1"]
    assert filter_and_page(NODES, {"label": "prod"}, exact_filter=False)[0] == 0
    assert filter_and_page(NODES, {"label": ""}, exact_filter=False)[0] == 0


def test_uri_matches_uri_or_any_of_uris() -> None:
    assert ids(filter_and_page(NODES, {"uri": "^/c$"}, exact_filter=False)[1]) == ["10"]
    assert ids(filter_and_page(NODES, {"uri": "/[ad]"}, exact_filter=False)[1]) == ["1", "2"]


def test_filters_combine_with_and() -> None:
    total, _ = filter_and_page(NODES, {"name": "a", "label": "team"}, exact_filter=False)
    assert total == 1


def test_exact_filter_only_where_enabled() -> None:
    args = {"filter": "service_id=1"}
    assert ids(filter_and_page(NODES, args, exact_filter=True)[1]) == ["10"]
    assert filter_and_page(NODES, args, exact_filter=False)[0] == 3
    assert parse_filter("service_id=1&upstream_id=u&x=y") == {"service_id": "1", "upstream_id": "u"}


def test_paging_sorts_by_created_index_and_total_counts_all() -> None:
    many = [node(i, 100 - i, uri=f"/{i}") for i in range(25)]
    total, out = filter_and_page(many, {"page": "2", "page_size": "10"}, exact_filter=False)
    assert total == 25
    assert [n["createdIndex"] for n in out] == list(range(86, 96))
    total, out = filter_and_page(many, {"page": "0", "page_size": "10"}, exact_filter=False)
    assert [n["createdIndex"] for n in out] == list(range(76, 86))
    _, out = filter_and_page(many, {"page": "9", "page_size": "10"}, exact_filter=False)
    assert out == []


def test_paging_needs_both_numbers() -> None:
    assert filter_and_page(NODES, {"page": "1"}, exact_filter=False)[1] == NODES
    assert filter_and_page(NODES, {"page": "x", "page_size": "1"}, exact_filter=False)[1] == NODES


@pytest.mark.parametrize(
    "args",
    [
        {"page": "inf", "page_size": "10"},
        {"page": "1e400", "page_size": "10"},
        {"page": "1", "page_size": "nan"},
        {"page": "-inf", "page_size": "inf"},
    ],
)
def test_numbers_that_are_not_finite_are_no_paging(args: dict[str, str]) -> None:
    """Issue #18: int() of them raised (OverflowError, ValueError), a 500."""
    assert filter_and_page(NODES, args, exact_filter=False) == (len(NODES), NODES)


@pytest.mark.parametrize("size", ["9", "501", "0", "-1"])
def test_page_size_bounds(size: str) -> None:
    with pytest.raises(PageSizeError, match="page_size must be between 10 and 500"):
        filter_and_page(NODES, {"page": "1", "page_size": size}, exact_filter=False)


def test_name_filter_runs_in_linear_time() -> None:
    # issue #18: the filter is a regex from the query string, searched on RE2
    nodes = [node(1, 1, name="a" * 50_000 + "!"), node(2, 2, name="aaa")]
    t0 = time.perf_counter()
    assert ids(filter_and_page(nodes, {"name": "^(a+)+$"}, exact_filter=False)[1]) == ["2"]
    assert time.perf_counter() - t0 < 0.5
    assert filter_and_page(nodes, {"name": "(?=a)"}, exact_filter=False)[0] == 0  # RE2 refuses
