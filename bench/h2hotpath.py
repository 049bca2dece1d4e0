"""HTTP/2 hot-path microbenchmark (run on demand, not a test): Tollway's own cost of one unary
gRPC call (``--grpc``) or one HTTP/2 request to an HTTP/1.1 upstream (``--h2``), in memory.

    .venv/bin/python bench/h2hotpath.py --grpc [--calls 20000] [--spy | --profile --own]
    .venv/bin/python bench/h2hotpath.py --h2 --against main      # A/B, interleaved

One client connection (the real ``HttpProtocol``, switched to ``H2Protocol`` by the h2c
preface) and one upstream connection (gRPC: the real ``upstream.h2conn.H2Connection`` in the
HTTP/2 pool; HTTP/1.1: a pooled ``UpstreamConnection``), both on in-memory transports, on a
running uvloop with the worker's GC settings. The peers' bytes (an h2load-like client: HEADERS
+ one framed message with END_STREAM, or a GET; a grpcio-like server: HEADERS, DATA, trailers)
are made ahead (after one call checked end to end), so a timed round runs only Tollway and the
event loop: CPU µs per call, best of ``--rounds`` rounds. ``--spy``: the same under py-spy, its
samples split into the h2 library's (h2, hpack, hyperframe), Tollway's own and the loop's
(see ``spy``). ``--profile``: a cProfile of the rounds, split the same way (the standard
library's and builtins' time charged to their callers; cProfile's overhead weighs on the
call-heavy library more). ``--access-log``: with the default access log on. ``--against
REV``: REV's src/ (git archive) and this tree, 4 interleaved pairs. ``--direct`` (with
``--h2``): no event-loop turns per call (they are most of the harness's own time), the worker's
deferred writes flushed after each read as bench/hotpath.py does for HTTP/1.1: the two figures
compare. Instructions per request, unaffected by the machine's load::

    for n in 1000 3000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
      .venv/bin/python bench/h2hotpath.py --h2 --direct --ahead 4000 --calls $n --rounds 1; done
    # (the difference of the two "Collected" counts) / 2000: the calls made ahead (--ahead)
    # and the set-up are the same in both runs
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import uvloop

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

GRPC_PATH = b"/tollway.test.Echo/Unary"
H2_PATH = b"/api/v1/svc500/items/42"
MESSAGE = b"\x00\x00\x00\x00\x07\n\x05hello"  # one framed Echo message ("hello")
UP_PORT = 18390
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 23:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class Transport:
    """An in-memory transport: what is written is kept in ``out``."""

    def __init__(self, peer: tuple[str, int], sock: tuple[str, int]) -> None:
        self.out: list[bytes] = []
        self.extra = {"peername": peer, "sockname": sock}
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None:
        raise AssertionError("closed")


def _h2(client: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client, header_encoding=None)
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    return conn


class Harness:
    """The gateway's two sides and their peers; ``call()`` runs one request through."""

    def __init__(self, grpc: bool, access_log: bool = False, direct: bool = False) -> None:
        self.grpc = grpc
        self.access_log = access_log
        self.direct = direct
        self.client = _h2(True)
        self.ct = Transport(("127.0.0.1", 50000), ("127.0.0.1", 9080))
        self.ut = Transport(("127.0.0.1", UP_PORT), ("127.0.0.1", 40000))
        self.upeer = _h2(False) if grpc else None
        self.up_conn: Any = None
        self.h2p: Any = None
        self.requests: list[bytes] = []  # made ahead (prepare)
        self.answers: list[bytes] = []
        self.calls = 0
        self.prof: cProfile.Profile | None = None

    async def setup(self) -> None:
        # One upstream connection for the whole run (the default recycles it every 1000).
        upstream = {
            "type": "roundrobin",
            "nodes": {f"127.0.0.1:{UP_PORT}": 1},
            # (idle for an hour: under callgrind the calls made ahead take minutes, and a pooled
            # connection swept meanwhile would send the request to a task)
            "keepalive_pool": {"size": 320, "idle_timeout": 3600, "requests": 2**31},
        }
        route: dict[str, Any] = {"uri": "/api/v1/svc500/*", "upstream": upstream}
        if self.grpc:
            route["uri"] = GRPC_PATH.decode()
            upstream["scheme"] = "grpc"
        store = Store()
        store.load(1, [KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1)])
        compiler = Compiler(default_settings(Path("/tmp/conf")), load_registry())
        await compiler.rebuild(store)
        log = None
        if self.access_log:  # the default format, to a file of a temporary directory
            from tollway.proxy.accesslog import AccessLog
            from tollway.settings import HttpConf

            path = Path(tempfile.mkdtemp(prefix="tollway-h2hot-")) / "access.log"
            log = AccessLog(str(path), HttpConf().access_log_format)
        state = ServerState(compiler, max_header_size=32768, max_body_size=0,
                            keepalive_timeout=60, http2=True, access_log=log)  # fmt: skip
        state.start(asyncio.get_running_loop())
        up = compiler.routes["1"].upstream
        assert up is not None
        key = (up.pool_key, "127.0.0.1", UP_PORT)
        if self.grpc:
            from tollway.upstream.h2conn import H2Connection

            conn = H2Connection(state.h2pool, key, up.limits)
            conn.connection_made(self.ut)  # type: ignore[arg-type]
            state.h2pool._conns[key] = [conn]
            assert self.upeer is not None
            self.upeer.receive_data(self.ut.take())
            conn.data_received(self.upeer.data_to_send())
            await self._turns(lambda: bool(self.ut.out))
            self.upeer.receive_data(self.ut.take())  # the SETTINGS ACK
        else:
            from tollway.upstream.pool import UpstreamConnection

            conn = UpstreamConnection(state.pool, key)
            conn.connection_made(self.ut)  # type: ignore[arg-type]
            state.pool.release(conn, up.limits)
        self.up_conn = conn
        proto = HttpProtocol(state)
        proto.connection_made(self.ct)  # type: ignore[arg-type]
        proto.data_received(self.client.data_to_send())
        self.h2p = self.ct.protocol
        assert self.h2p is not None, "no switch to HTTP/2"
        self.client.receive_data(self.ct.take())
        self.h2p.data_received(self.client.data_to_send())  # the SETTINGS ACK
        self.ct.take()

    @staticmethod
    async def _turns(done: Callable[[], bool]) -> None:
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("no progress")

    def _request(self) -> bytes:
        c = self.client
        sid = c.get_next_available_stream_id()
        if self.grpc:
            fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", GRPC_PATH),
                      (b":authority", b"127.0.0.1:9080"), (b"user-agent", b"h2load nghttp2/1.52.0"),
                      (b"content-type", b"application/grpc"), (b"te", b"trailers")]  # fmt: skip
            c.send_headers(sid, fields)
            c.send_data(sid, MESSAGE, end_stream=True)
        else:
            fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", H2_PATH),
                      (b":authority", b"127.0.0.1:9080"), (b"user-agent", b"h2load nghttp2/1.52.0"),
                      (b"accept", b"*/*")]  # fmt: skip
            c.send_headers(sid, fields, end_stream=True)
        return c.data_to_send()

    def _answer(self, data: bytes) -> bytes:
        """The upstream peer's answer to what Tollway sent it."""
        if not self.grpc:
            return RESPONSE
        p = self.upeer
        assert p is not None
        sid = 0
        for e in p.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                sid = e.stream_id
            elif isinstance(e, h2.events.DataReceived):
                p.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        assert sid, "no request upstream"
        p.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                             (b"grpc-accept-encoding", b"identity,deflate,gzip")])  # fmt: skip
        p.send_data(sid, MESSAGE)
        p.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")], end_stream=True)
        return p.data_to_send()

    async def check(self) -> None:
        """One call through with both peers reading what Tollway sent: the client gets its
        answer whole (HEADERS, the message, END_STREAM)."""
        self.h2p.data_received(self._request())
        await self._turns(lambda: bool(self.ut.out))
        self.up_conn.data_received(self._answer(self.ut.take()))
        await self._turns(lambda: bool(self.ct.out))
        for _ in range(3):
            await asyncio.sleep(0)
        events = self.client.receive_data(self.ct.take())
        assert any(isinstance(e, h2.events.StreamEnded) for e in events), events
        if self.upeer is not None:
            self.upeer.receive_data(self.ut.take())
            # (the answers made ahead come from requests of another client: a fresh table)
            self.upeer.decoder = type(self.upeer.decoder)()

    def prepare(self, n: int) -> None:
        """The peers' bytes for ``n`` more calls, made ahead: a timed round runs Tollway (and
        the event loop) only."""
        c = self.client
        other = _h2(True)  # the requests the upstream peer answers ahead of time
        other.data_to_send()
        sid = self.up_conn.h2.next_sid - 2 if self.grpc else 0  # (the last id it opened)
        for _ in range(n):
            self.requests.append(self._request())
            c.streams.clear()  # (the client's own state is not needed: no stream limit)
            if not self.grpc:
                self.answers.append(RESPONSE)
                continue
            sid += 2
            other.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                     (b":path", GRPC_PATH), (b":authority", b"u")],
                               end_stream=True)  # fmt: skip
            other.streams.clear()
            self.answers.append(self._answer(other.data_to_send()))

    async def round(self, n: int) -> float:
        """µs of CPU per call over ``n`` calls (the first ``n`` of those prepared)."""
        if self.direct:
            return await self.round_direct(n)
        feed_client, feed_up = self.h2p.data_received, self.up_conn.data_received
        to_up, to_client = self.ut.out, self.ct.out
        requests, answers = self.requests[:n], self.answers[:n]
        del self.requests[:n], self.answers[:n]
        prof = self.prof
        if prof is not None:
            prof.enable()
        t0 = time.process_time()
        for request, answer in zip(requests, answers, strict=True):
            feed_client(request)
            while not to_up:
                await asyncio.sleep(0)
            to_up.clear()
            feed_up(answer)
            while not to_client:
                await asyncio.sleep(0)
            for _ in range(3):  # what stays queued (an acknowledgement) leaves
                await asyncio.sleep(0)
            to_client.clear()
            to_up.clear()
        spent = time.process_time() - t0
        if prof is not None:
            prof.disable()
        self.calls += n
        assert self.h2p.state.requests == self.calls + 1, "a call did not finish"
        assert not self.h2p.streams and not getattr(self.up_conn, "streams", None)
        return spent / n * 1e6

    async def round_direct(self, n: int) -> float:
        """``round`` without turning the event loop per call (``--direct``, as bench/hotpath.py
        runs HTTP/1.1): the request's read, the worker's deferred writes (``flush_writes``), the
        answer's read, the writes again. Only for a call that needs no task (``--h2``: the
        exchange's callback path); the flushes it scheduled run between rounds (no-ops)."""
        feed_client, feed_up = self.h2p.data_received, self.up_conn.data_received
        flush = self.h2p.state.flush_writes
        to_up, to_client = self.ut.out, self.ct.out
        requests, answers = self.requests[:n], self.answers[:n]
        del self.requests[:n], self.answers[:n]
        prof = self.prof
        if prof is not None:
            prof.enable()
        t0 = time.process_time()
        for request, answer in zip(requests, answers, strict=True):
            feed_client(request)
            flush()
            if not to_up:
                raise AssertionError("the request went to a task: --direct cannot time it")
            to_up.clear()
            feed_up(answer)
            flush()
            to_client.clear()
        spent = time.process_time() - t0
        if prof is not None:
            prof.disable()
        for _ in range(3):
            await asyncio.sleep(0)
        self.calls += n
        assert self.h2p.state.requests == self.calls + 1, "a call did not finish"
        assert not self.h2p.streams
        return spent / n * 1e6


LIB = ("/h2/", "/hpack/", "/hyperframe/", "/jh2/")
OWN = ("/tollway/", "h2hotpath.py")


def _kind(filename: str) -> str | None:
    """ "lib" (the h2 library), "own" (Tollway, the harness), None (the standard library, a
    builtin: its time is its callers')."""
    if any(p in filename for p in LIB):
        return "lib"
    if any(p in filename for p in OWN):
        return "own"
    return None


def split(prof: cProfile.Profile, per: dict[str, float] | None = None) -> tuple[float, float]:
    """(self seconds of the h2 library, all self seconds) of a profile. The standard library's
    and builtins' self time counts for whoever called them (hpack's logging calls are the
    library's, a dict.get in Tollway is Tollway's), shared by the time each caller spent."""
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    totals = {"lib": 0.0, "own": 0.0}

    def charge(func: Any, seconds: float, depth: int) -> None:
        kind = _kind(func[0])
        if kind is not None or depth > 20:
            totals[kind or "own"] += seconds
            if per is not None and kind != "lib":
                name = f"{func[0].rpartition('/src/')[2]}:{func[1]}({func[2]})"
                per[name] = per.get(name, 0.0) + seconds
            return
        callers = stats[func][4]
        weight = sum(c[2] + c[3] for c in callers.values()) if callers else 0.0
        if not weight:
            totals["own"] += seconds
            return
        for caller, c in callers.items():
            if caller in stats:
                charge(caller, seconds * (c[2] + c[3]) / weight, depth + 1)

    for func, (_, _, tt, _, _) in stats.items():
        charge(func, tt, 0)
    return totals["lib"], totals["lib"] + totals["own"]


def worker_gc() -> None:
    """The worker's collector settings (tollway.worker.main): without them a young-generation
    collection every 700 allocations lands on whatever line allocates (py-spy shows it)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run(args: argparse.Namespace) -> None:
    h = Harness(args.grpc, args.access_log, args.direct)
    await h.setup()
    await h.check()
    h.prepare(max(args.ahead, 500 + args.calls))
    worker_gc()
    await h.round(500)  # warm
    times = sorted([await h.round(args.calls // args.rounds) for _ in range(args.rounds)])
    best, median = times[0], times[len(times) // 2]
    line = f"{best:.1f} us/call (best of {args.rounds} rounds; median {median:.1f})"
    print(line, flush=True)


async def run_profiled(args: argparse.Namespace) -> None:
    h = Harness(args.grpc, args.access_log, args.direct)
    await h.setup()
    await h.check()
    h.prepare(500 + args.calls + args.calls // 4)
    worker_gc()
    await h.round(500)
    times = sorted([await h.round(args.calls // args.rounds) for _ in range(args.rounds)])
    h.prof = prof = cProfile.Profile()
    await h.round(args.calls // 4)
    h.prof = None
    lib, total = split(prof)
    share = lib / total if total else 0.0
    best = times[0]
    print(f"{best:.1f} us/call (best of {args.rounds}); profiled self time: h2 library "
          f"{100 * share:.1f}%, own {100 * (1 - share):.1f}% -> own {best * (1 - share):.1f} "
          f"us/call, library {best * share:.1f} us/call")  # fmt: skip
    if args.own:  # own self time per function (with the stdlib and builtins it called)
        per: dict[str, float] = {}
        split(prof, per)
        own = sum(per.values())
        for name, sec in sorted(per.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"{100 * sec / own:5.1f}%  {best * (1 - share) * sec / own:5.1f} us  {name}")
    else:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


def spy(argv: list[str], rate: int = 1000) -> None:
    """This benchmark again under py-spy (sampling: no profiler overhead skewing the split),
    its samples of the timed rounds split into the h2 library's, Tollway's own and the rest
    (the harness's loop turns, and the event loop's C code running Tollway's callbacks and
    tasks): each sample goes to the innermost frame that is one of them."""
    exe = Path(sys.executable).with_name("py-spy")
    out = Path(tempfile.mkdtemp(prefix="tollway-h2spy-")) / "raw.txt"
    cmd = [str(exe), "record", "-r", str(rate), "--format", "raw", "--full-filenames", "-o",
           str(out), "--", sys.executable, str(Path(__file__).resolve()), *argv]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = next(x for x in res.stdout.splitlines() if "us/call" in x)
    print(result)
    counts = {"lib": 0, "own": 0, "harness": 0}
    per: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        kind, name = _sample(frames)
        if kind is None:
            continue
        counts[kind] += int(n)
        if kind == "own":
            per[name] = per.get(name, 0) + int(n)
    total = sum(counts.values())
    best = float(result.split()[0])
    print(f"py-spy at {rate} Hz, {total} samples of the timed work: "
          + ", ".join(f"{k} {100 * v / total:.1f}% ({best * v / total:.1f} us/call)"
                      for k, v in counts.items()))  # fmt: skip
    for name, n in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{100 * n / total:5.1f}%  {best * n / total:5.1f} us  {name}")


def _sample(frames: list[str]) -> tuple[str | None, str]:
    """(the kind of a sample, its innermost own frame); None: not the timed work."""
    joined = ";".join(frames)
    if "Runner.run" not in joined:
        return None, ""  # start-up, shut-down
    if any(f"Harness.{n} " in joined for n in ("setup", "check", "prepare")):
        return None, ""  # the peers' work, made ahead
    for f in reversed(frames):
        if _lib(f):
            return "lib", ""
        if "/tollway/" in f:
            name = f.rpartition("/src/")[2].rpartition(":")[0]
            return "own", f"{f.partition(' ')[0]} ({name})"
        if "h2hotpath.py" in f:
            return "harness", ""
    return "harness", ""  # the event loop itself


def _lib(frame: str) -> bool:
    return any(p in frame for p in LIB)


def against(rev: str, passthrough: list[str]) -> None:
    """Interleaved runs of ``rev``'s src/ (git archive) and of this tree."""
    repo = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="tollway-h2ab-"))
    try:
        tar = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"],
                             capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
        argv = [sys.executable, str(Path(__file__).resolve()), *passthrough]
        for _ in range(4):
            for label, src in ((rev, tmp / "src"), ("this tree", repo / "src")):
                env = {**os.environ, "PYTHONPATH": str(src)}
                out = subprocess.run(argv, env=env, capture_output=True, text=True,
                                     check=True).stdout.strip()  # fmt: skip
                print(f"{label:>10}: {out}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if "--spy" in sys.argv:
        spy([a for a in sys.argv[1:] if a != "--spy"])
        return
    if "--against" in sys.argv:
        i = sys.argv.index("--against")
        against(sys.argv[i + 1], sys.argv[1:i] + sys.argv[i + 2 :])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--grpc", action="store_true", help="unary gRPC calls to a gRPC upstream")
    mode.add_argument("--h2", action="store_true", help="HTTP/2 GETs to an HTTP/1.1 upstream")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="own vs h2 library, and a cProfile")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--own", action="store_true", help="the profile without the h2 library")
    ap.add_argument("--access-log", action="store_true", help="the access log on (its default)")
    ap.add_argument("--ahead", type=int, default=0,
                    help="calls made ahead (default: as many as the rounds take)")  # fmt: skip
    ap.add_argument("--direct", action="store_true",
                    help="(--h2) no event-loop turn per call: as bench/hotpath.py")  # fmt: skip
    ap.add_argument("--against", metavar="REV", help="A/B against a git revision")
    ap.add_argument("--spy", action="store_true", help="the split from py-spy's samples")
    args = ap.parse_args()
    if args.direct and args.grpc:
        ap.error("--direct is for --h2 (a gRPC call's upstream answer needs loop turns)")
    uvloop.run(run_profiled(args) if args.profile else run(args))


if __name__ == "__main__":
    main()
