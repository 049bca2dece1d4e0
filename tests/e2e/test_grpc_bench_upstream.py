"""The gRPC benchmark's native upstream (bench/nginx/grpc_upstream.conf, issue #14): nginx
answering every unary call with one pre-built reply and ``grpc-status: 0`` in trailers. A real
grpcio client's call to it, directly and through the gateway, decodes that reply with status OK:
what bench/grpc_proxy.py times is a well-formed call. Needs nginx (a bench dependency:
``scripts/ensure-system-deps.sh bench``); skipped without it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.gateway import Gateway, free_port
from tests.support.grpc_echo import echo_pb2_grpc
from tests.support.grpc_server import Msg, frame
from tests.support.wait import wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = Path(__file__).resolve().parents[2] / "bench" / "nginx" / "grpc_upstream.conf"
PATH = "/tollway.test.Echo/Unary"
REPLY = Msg(text="native:reply", count=3)

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


def call(port: int) -> tuple[Any, grpc.StatusCode]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply, c = echo_pb2_grpc.EchoStub(ch).Unary.with_call(Msg(text="hi"), timeout=10)
    return reply, c.code()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    # (not under pytest's private tmp dir: run as root, nginx's worker is "nobody", and must
    # read the reply)
    work = Path(tempfile.mkdtemp(prefix="tollway-grpc-upstream-"))
    for sub in ("conf", "logs", "run", "htdocs"):
        (work / sub).mkdir()
    (work / "htdocs" / "reply").write_bytes(frame(REPLY))
    for p in (work, work / "htdocs", work / "htdocs" / "reply"):
        p.chmod(0o755)
    port = free_port()
    conf = TEMPLATE.read_text()
    for mark, value in (("@WORKDIR@", work), ("@NAME@", "up"), ("@PORT@", port), ("@PATH@", PATH)):
        conf = conf.replace(mark, str(value))
    (work / "conf" / "up.conf").write_text(conf)
    log = work / "logs" / "up.out"
    proc = subprocess.Popen(
        [NGINX, "-p", f"{work}/", "-e", str(log), "-c", str(work / "conf" / "up.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: call(port), timeout=15)  # (retried while it raises)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def gw(standalone_gateway: Any, upstream: int) -> Gateway:
    yaml = f"""
routes:
  - id: g
    uri: {PATH}
    upstream: {{scheme: grpc, nodes: {{"127.0.0.1:{upstream}": 1}}}}
#END
"""
    return standalone_gateway(yaml)


def test_the_upstream_answers_a_grpc_call(upstream: int) -> None:
    reply, code = call(upstream)
    assert (reply, code) == (REPLY, grpc.StatusCode.OK)


def test_calls_through_the_gateway_decode_with_status_ok(gw: Gateway) -> None:
    for _ in range(3):  # (the later calls on the pooled upstream connection)
        reply, code = call(gw.port)
        assert (reply, code) == (REPLY, grpc.StatusCode.OK)
