"""The response head header_filter plugins edit (kit_head.ResponseHead through the kit)."""

from __future__ import annotations

from tests.unit.plugins.ctx import make_ctx
from tollway.httprules.response_head import pairs_to_lines
from tollway.plugins.kit import Consumer, wire_value
from tollway.plugins.kit_head import (
    EarlyHeaders,
    HeaderGroup,
    ResponseHead,
    apply_early,
    early_lines,
    early_pairs,
    early_tail,
)

UPSTREAM = pairs_to_lines([(b"Server", b"nginx"), (b"X-A", b"1"), (b"x-a", b"2")])


def head() -> ResponseHead:
    return ResponseHead(list(UPSTREAM), b"12")


def test_untouched_head_is_the_upstreams_pieces() -> None:
    h = head()
    assert h.get("x-a") == "1"
    assert h.get("content-length") == "12"
    lines, length = h.wire()
    assert lines is h._lines and lines == UPSTREAM  # reused as they came, not re-encoded
    assert length == b"12"


def test_adding_headers_appends_them_without_decoding() -> None:
    h = head()
    h.set("X-RateLimit-Limit", "10")
    h.add("Vary", "Origin")
    h.set("X-RateLimit-Limit", "9")  # replaces the added one
    assert h._pairs is None
    lines, length = h.wire()
    assert b"".join(lines) == (
        b"Server: nginx\r\nX-A: 1\r\nx-a: 2\r\nVary: Origin\r\nX-RateLimit-Limit: 9\r\n"
    )
    assert length == b"12"
    assert UPSTREAM == pairs_to_lines([(b"Server", b"nginx"), (b"X-A", b"1"), (b"x-a", b"2")])


def test_setting_an_upstream_header_replaces_every_line_of_it() -> None:
    h = head()
    h.set("X-a", "3")
    lines, _ = h.wire()
    assert b"".join(lines) == b"Server: nginx\r\nX-a: 3\r\n"


def test_content_length_is_a_header_too() -> None:
    h = head()
    h.set("Content-Length", None)
    assert h.wire() == (list(UPSTREAM), None)
    h = head()
    h.add("Content-Length", "5")  # as before: the last one is the length sent
    assert h.wire()[1] == b"5"


def test_set_all_is_set_for_each() -> None:
    one, many = head(), head()
    items = {"X-B": "b", "x-a": "new", "Gone": None}
    for k, v in items.items():
        one.set(k, v)
    many.set_all(items, wire_value)
    assert one.wire() == many.wire()
    fast = head()
    fast.set_all({"X-L": "1", "X-R": "bad\r\nInjected: 1"}, wire_value)
    assert b"".join(fast.wire()[0]).endswith(b"X-L: 1\r\nX-R: bad  Injected: 1\r\n")


def test_context_methods_and_the_pairs_view() -> None:
    ctx = make_ctx()
    ctx.resp_head = head()
    ctx.set_response_headers({"X-RateLimit-Remaining": "4"})
    assert ctx.get_response_header("x-ratelimit-remaining") == "4"
    assert ctx.resp_headers == [
        ("Server", "nginx"),
        ("X-A", "1"),
        ("x-a", "2"),
        ("Content-Length", "12"),
        ("X-RateLimit-Remaining", "4"),
    ]
    ctx.resp_headers = [("A", "b")]  # replacing the whole head still works
    assert ctx.resp_head is not None and ctx.resp_head.wire() == (
        [b"A", b": ", b"b", b"\r\n"],
        None,
    )


def test_a_header_group_is_appended_or_replaces_what_the_upstream_sent() -> None:
    group = HeaderGroup(("X-Q-Limit", "X-A"))
    h = head()
    h.set_group(HeaderGroup(("X-Q-Limit", "X-Q-Left")), ("10", "9"))  # none in the head
    assert h._pairs is None
    assert b"".join(h.wire()[0]).endswith(b"X-Q-Limit: 10\r\nX-Q-Left: 9\r\n")
    h = head()
    h.set_group(group, ("10", "3"))  # X-A is the upstream's: replaced, both of its lines
    tail = [("X-Q-Limit", "10"), ("X-A", "3")]
    assert h.pairs() == [("Server", "nginx"), ("Content-Length", "12"), *tail]
    assert not HeaderGroup(("Content-Length", "X-B")).plain


def test_a_group_value_is_made_safe_by_the_context() -> None:
    ctx = make_ctx("/")
    ctx.set_response_group(HeaderGroup(("X-Q",)), ("1\r\nX-Evil: 1",))
    assert ctx.get_response_header("x-q") == "1  X-Evil: 1"


def test_attaching_a_consumer_sets_its_headers_and_drops_the_clients() -> None:
    """APISIX consumer.attach_consumer: the upstream learns who called; what the client sent
    under these names never passes (the edits are made once per consumer, applied per request)."""
    jack = Consumer("jack", None, {}, labels={"custom_id": "c\r\n1"}, credential_id=None)
    for _ in range(2):  # the second request reuses the consumer's edits
        ctx = make_ctx(
            "/", headers={"X-Credential-Identifier": "forged", "X-Consumer-Username": "x"}
        )
        ctx.attach_consumer(jack)
        assert ctx.consumer_name == "jack"
        assert ctx.headers["x-consumer-username"] == "jack"
        assert ctx.headers["x-consumer-custom-id"] == "c  1"
        assert "x-credential-identifier" not in ctx.headers
        assert ctx.up_header_ops == [
            ("X-Consumer-Username", "jack", False),
            ("X-Credential-Identifier", None, False),
            ("X-Consumer-Custom-Id", "c  1", False),
        ]
    ctx = make_ctx("/")
    ctx.attach_consumer(Consumer("anna", None, {}))
    assert ctx.up_header_ops == [("X-Consumer-Username", "anna", False)]  # nothing to remove


def test_a_group_matches_the_upstreams_names_whatever_their_case() -> None:
    h = ResponseHead(pairs_to_lines([(b"x-Q-lImit", b"7"), (b"Server", b"nginx")]), None)
    h.set_group(HeaderGroup(("X-Q-Limit", "X-Q-\u0101")), ("10", "1"))
    assert h.pairs() == [("Server", "nginx"), ("X-Q-Limit", "10"), ("X-Q-\u0101", "1")]


QUOTA = HeaderGroup(("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"))
QUOTA_LINES = (
    *(b"X-RateLimit-Limit", b": ", b"10", b"\r\n"),
    *(b"X-RateLimit-Remaining", b": ", b"9", b"\r\n"),
    *(b"X-RateLimit-Reset", b": ", b"60", b"\r\n"),
)


def test_an_encoded_group_goes_out_as_it_was_given() -> None:
    assert QUOTA.wire_names == (
        b"X-RateLimit-Limit",
        b"X-RateLimit-Remaining",
        b"X-RateLimit-Reset",
    )
    h = head()
    assert h.set_group_wire(QUOTA, QUOTA_LINES)
    lines, length = h.wire()
    assert lines == [*UPSTREAM, *QUOTA_LINES] and length == b"12"
    assert h._lines == UPSTREAM  # the upstream's pieces are not changed in place


def test_an_encoded_group_is_refused_when_the_head_has_one_of_its_names() -> None:
    h = ResponseHead(pairs_to_lines([(b"x-ratelimit-reset", b"1")]), None)
    assert not h.set_group_wire(QUOTA, QUOTA_LINES)  # the caller then sets them one by one
    h2 = head()
    h2.add("Vary", "Origin")  # something was added before: keep one list of additions
    assert not h2.set_group_wire(QUOTA, QUOTA_LINES)
    h3 = head()
    assert h3.set_group_wire(QUOTA, QUOTA_LINES)
    assert not h3.set_group_wire(QUOTA, QUOTA_LINES)  # a second group: through set_group


def test_later_plugins_see_and_edit_an_encoded_group() -> None:
    h = head()
    assert h.set_group_wire(QUOTA, QUOTA_LINES)
    assert h.get("x-ratelimit-remaining") == "9"  # read as text (decoded once)
    h.set("X-RateLimit-Remaining", None)  # response-rewrite removes one
    h.add("Vary", "Origin")
    lines, _ = h.wire()
    assert b"".join(lines[len(UPSTREAM) :]) == (
        b"X-RateLimit-Limit: 10\r\nX-RateLimit-Reset: 60\r\nVary: Origin\r\n"
    )
    h = head()
    h.set_group_wire(QUOTA, QUOTA_LINES)
    assert h.pairs()[-3:] == [
        ("X-RateLimit-Limit", "10"),
        ("X-RateLimit-Remaining", "9"),
        ("X-RateLimit-Reset", "60"),
    ]


def test_a_group_with_a_name_that_cannot_be_sent_as_is_has_no_encoded_form() -> None:
    assert HeaderGroup(("X-Ä", "B", "C")).wire_names is None
    assert HeaderGroup(("A", "A", "B")).wire_names is None  # not distinct: set semantics
    assert HeaderGroup(("Bad Name", "B", "C")).wire_names is None


def _early(group: HeaderGroup, texts: tuple[str, ...]) -> EarlyHeaders:
    """An EarlyHeaders entry as limit-count builds one: the group's lines as flat pieces."""
    pieces: tuple[bytes, ...] = ()
    for n, v in zip(group.line_names, texts, strict=True):
        pieces += (n, b": ", v.encode("latin-1"), b"\r\n")
    return group, pieces


PAIR = HeaderGroup(("X-L", "X-R"))


def test_early_headers_appended_to_the_upstreams_lines() -> None:
    lines, length = early_lines([_early(PAIR, ("10", "9"))], list(UPSTREAM), b"12")
    assert lines == [*UPSTREAM, b"X-L", b": ", b"10", b"\r\n", b"X-R", b": ", b"9", b"\r\n"]
    assert length == b"12"


def test_early_headers_replace_the_upstreams_of_that_name() -> None:
    upstream = pairs_to_lines([(b"x-r", b"upstream"), (b"X-A", b"1")])
    lines, _ = early_lines([_early(PAIR, ("10", "9"))], upstream, None)
    h = ResponseHead(lines)
    assert h.pairs() == [("X-A", "1"), ("X-L", "10"), ("X-R", "9")]
    # a second group naming one of the first's: the later value wins (set semantics)
    second = _early(HeaderGroup(("X-R",)), ("8",))
    lines, _ = early_lines([_early(PAIR, ("10", "9")), second], list(UPSTREAM), None)
    assert [v for k, v in ResponseHead(lines).pairs() if k == "X-R"] == ["8"]


def test_early_headers_seen_by_header_filter_plugins() -> None:
    h = head()
    apply_early(h, [_early(PAIR, ("10", "9"))])
    assert h.get("x-r") == "9"
    h.set("X-L", "edited")
    lines, _ = h.wire()
    assert ResponseHead(lines).pairs()[-2:] == [("X-R", "9"), ("X-L", "edited")]


def test_early_headers_on_a_local_answer() -> None:
    headers = [(b"Content-Type", b"text/html"), (b"x-l", b"old")]
    out = early_pairs([_early(PAIR, ("10", "9"))], headers)
    assert out == [(b"Content-Type", b"text/html"), (b"X-L", b"10"), (b"X-R", b"9")]


def test_a_groups_name_in_an_upstream_head_is_found_after_other_names_were_remembered() -> None:
    group = HeaderGroup(("X-L", "X-R"))
    names = [b"Server", b"Date"]
    assert group.absent_from(names)
    assert group.others >= set(names)  # remembered: the next such head is one C-level check
    assert group.absent_from(names)
    assert not group.absent_from([b"Server", b"x-r"])  # any case
    assert not group.absent_from([b"X-L"])
    assert b"x-r" not in group.others and b"X-L" not in group.others
    # the upstream's header of the group's name is replaced, though other heads came before
    lines, _ = early_lines([_early(group, ("10", "9"))], pairs_to_lines([(b"X-r", b"up")]), None)
    assert ResponseHead(lines).pairs() == [("X-L", "10"), ("X-R", "9")]


def test_the_names_remembered_are_bounded() -> None:
    group = HeaderGroup(("X-L",))
    for i in range(3000):
        assert group.absent_from([b"X-%d" % i])
    assert len(group.others) <= 1024
    assert not group.absent_from([b"x-l"])


def test_a_group_without_an_encoded_form_is_set_as_text_from_its_pieces() -> None:
    group = HeaderGroup(("X-Ä", "X-B"))  # not latin-1 tokens: no wire names
    assert group.wire_names is None
    lines, _ = early_lines([_early(group, ("1", "2"))], list(UPSTREAM), None)
    # set by the group's own names (as text), not the placeholders of the pieces
    assert ResponseHead(lines).pairs()[-2:] == [("X-Ä", "1"), ("X-B", "2")]


def test_early_tail_is_the_pieces_to_append_or_none() -> None:
    entry = _early(PAIR, ("10", "9"))
    assert early_tail([entry], list(UPSTREAM)) is entry[1]  # one group: its tuple as it is
    assert early_tail([entry], pairs_to_lines([(b"x-R", b"up")])) is None  # the head has one
    other = _early(HeaderGroup(("X-Q",)), ("1",))
    assert early_tail([entry, other], list(UPSTREAM)) == entry[1] + other[1]
    assert early_tail([entry, _early(HeaderGroup(("x-l",)), ("1",))], list(UPSTREAM)) is None
    assert early_tail([_early(HeaderGroup(("X-Ä",)), ("1",))], list(UPSTREAM)) is None
