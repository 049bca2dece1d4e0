"""SystemResolver against a real DNS server on a loopback UDP port (dnspython on both ends)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tollway.upstream.dns import DnsError, SystemResolver

RECORDS: dict[tuple[str, str], tuple[int, list[str]]] = {
    ("api.test.", "A"): (7, ["10.1.1.2", "10.1.1.1"]),
    ("v6.test.", "AAAA"): (9, ["fd00::1"]),
}


class FakeDns(asyncio.DatagramProtocol):
    """Answers from RECORDS; NXDOMAIN for unknown names, no answer for a missing type;
    names starting with "slow" are never answered."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text()
        if name.startswith("slow"):
            return
        response = dns.message.make_response(query)
        entry = RECORDS.get((name, dns.rdatatype.to_text(question.rdtype)))
        if entry is not None:
            ttl, ips = entry
            rdtype = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, ips))
        elif not any(n == name for n, _ in RECORDS):
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


def with_server(body: Callable[[SystemResolver], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(FakeDns, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            await body(SystemResolver(timeout=0.5, nameservers=["127.0.0.1"], port=port))
        finally:
            transport.close()

    asyncio.run(main())


def test_a_records_with_their_ttl() -> None:
    async def body(r: SystemResolver) -> None:
        ips, ttl = await r.resolve("api.test")
        assert sorted(ips) == ["10.1.1.1", "10.1.1.2"] and ttl == 7.0

    with_server(body)


def test_aaaa_when_there_is_no_a_record() -> None:
    async def body(r: SystemResolver) -> None:
        assert await r.resolve("v6.test") == (["fd00::1"], 9.0)

    with_server(body)


def test_names_dns_does_not_know_fall_back_to_the_hosts_file() -> None:
    async def body(r: SystemResolver) -> None:
        ips, ttl = await r.resolve("localhost")  # NXDOMAIN here, in /etc/hosts
        assert "127.0.0.1" in ips and ttl == 30.0
        with pytest.raises(DnsError):
            await r.resolve("nothing.invalid")

    with_server(body)


def test_a_silent_server_is_a_timeout_error() -> None:
    async def body(r: SystemResolver) -> None:
        t0 = time.monotonic()
        with pytest.raises(DnsError, match="timeout"):
            await r.resolve("slow.test")
        assert time.monotonic() - t0 < 2.0

    with_server(body)
