"""User-regex microbenchmark (run on demand, not a test): tollway.regex (RE2) against Python's re.

    .venv/bin/python bench/regex.py

Per call: the operations requests run (a vars ``~~`` search, uri-blocker's OR-ed rules, a
``regex_uri`` substitution, a User-Agent search, a uri-parameter full match), best of 7 rounds.
Then the reason for RE2: ``(a+)+$`` against n "a"s and a "!", where Python's re doubles with each
character (stopped before a round would pass 2 s) and RE2 stays linear.
"""

from __future__ import annotations

import re
import time
import timeit
from collections.abc import Callable

from tollway.regex import compile_regex, compile_replacement

URI = "/api/v1/svc500/items/42"
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 "
    "Safari/537.36"
)


def ns(call: Callable[[], object], number: int = 100_000) -> float:
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e9


def per_call() -> None:
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = []
    for label, pattern, text in [
        ("vars ~~ (anchored)", r"^/api/v[0-9]+/svc[0-9]+/items/[0-9]+$", URI),
        ("uri-blocker, 3 rules", r"\.php$|^/admin/|/\.git", URI),
        ("ua-restriction", r"(?:bot|spider|crawl)", UA),
    ]:
        py, rx = re.compile(pattern), compile_regex(pattern)
        cases.append(
            (
                label,
                lambda py=py, t=text: py.search(t) is not None,
                lambda rx=rx, t=text: rx.search(t),
            )
        )
    py_sub = re.compile(r"^/api/v1/(.*)")
    rx_sub = compile_regex(r"^/api/v1/(.*)")
    tpl = compile_replacement("/v1/$1", rx_sub.groups)
    cases.append(
        ("regex_uri sub", lambda: py_sub.sub(r"/v1/\1", URI, count=1), lambda: rx_sub.sub(tpl, URI))
    )
    py_full = re.compile(r"([^/]+)/x/(.*)\Z", re.DOTALL)
    rx_full = compile_regex(r"([^/]+)/x/(.*)\z", options="sa")
    path = "/u/1/x/2"
    cases.append(
        (
            "uri params (2 groups)",
            lambda: py_full.match(path, 3),
            lambda: rx_full.match_groups(path, 3),
        )
    )
    print(f"{'per call':<24}{'Python re':>12}{'RE2':>10}")
    for label, py_call, rx_call in cases:
        print(f"{label:<24}{ns(py_call):>10.0f}ns{ns(rx_call):>8.0f}ns")


def catastrophic() -> None:
    pattern = r"(a+)+$"
    py, rx = re.compile(pattern), compile_regex(pattern)
    print(f"\n{pattern} against n 'a's and '!'")
    n = 16
    while True:
        text = "a" * n + "!"
        t0 = time.perf_counter()
        py.search(text)
        took = time.perf_counter() - t0
        print(f"  Python re, n={n}: {took * 1e3:9.1f} ms")
        if took * 4 > 2.0:  # the next step (n + 2) would pass 2 s
            break
        n += 2
    for n in (24, 1_000, 100_000):
        text = "a" * n + "!"
        t0 = time.perf_counter()
        rx.search(text)
        print(f"  RE2,       n={n}: {(time.perf_counter() - t0) * 1e3:9.3f} ms")


if __name__ == "__main__":
    per_call()
    catastrophic()
