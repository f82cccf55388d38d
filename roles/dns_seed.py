"""DNS seeds: how a new node finds its first peers (the lecture's first answer).

Both directions use dnspython, so no DNS packet is built or parsed by hand:

- `resolve_seed` asks a resolver (the system's, or --dns-server HOST:PORT) for
  every A and AAAA record of a seed name; each is a node on the default port.
- `DnsSeedServer` answers A/AAAA queries for one zone with addresses the node
  recently completed a handshake with, chosen at random per query, as
  Bitcoin's crawler-backed seeders (bitcoin-seeder) do.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from typing import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

log = logging.getLogger("epscoin.dns")

MAX_SEED_ADDRESSES = 32  # addresses taken from one seed name, and served in one answer
DNS_TIMEOUT = 3.0  # seconds for one seed lookup, all retries included
ANSWER_TTL = 60  # seconds a resolver may cache our answer; short, as seeders' are
CLASSIC_UDP_SIZE = 512  # a DNS answer without EDNS must fit in 512 bytes (RFC 1035)


def resolve_seed(name: str, server: tuple[str, int] | None, port: int,
                 limit: int = MAX_SEED_ADDRESSES, timeout: float = DNS_TIMEOUT) -> list[tuple[str, int]]:
    """Every A and AAAA address of name (at most `limit`), each as (ip, port). Empty on any DNS failure."""
    resolver = dns.resolver.Resolver(configure=server is None)
    if server is not None:
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = timeout
    resolver.use_edns(0, 0, 1232)  # room for all 32 records; without EDNS only 29 fit in 512 bytes
    found: list[tuple[str, int]] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, rdtype, search=False)
        except dns.exception.DNSException as error:  # NXDOMAIN, no answer, timeout, refused...
            log.debug("[DNS] %s %s: %s", name, rdtype, error)
            continue
        found.extend((record.address, port) for record in answer)
    return found[:limit]


AddressSource = Callable[[], list[str]]  # the IPs the seeder may hand out now


class DnsSeedServer(socketserver.UDPServer):
    """A tiny authoritative DNS server for one zone, on its own thread."""

    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], zone: str, addresses: AddressSource) -> None:
        self.zone = dns.name.from_text(zone)
        self.addresses = addresses
        self._thread = threading.Thread(target=self.serve_forever, args=(0.2,), name="dns-seed", daemon=True)
        self.address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        super().__init__(listen, _SeedRequestHandler)

    def start(self) -> None:
        self._thread.start()
        host, port = self.server_address[:2]
        log.info("[DNS SEED] serving %s on %s:%d/udp", self.zone.to_text(omit_final_dot=True), host, port)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query packet; None for packets that are not a question."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many types for malformed packets; none may stop the server
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        if question.name != self.zone or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)  # not our zone: we are no open resolver
        elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            version = 4 if question.rdtype == dns.rdatatype.A else 6
            # The source lists this seed first and the rest at random; keep that order, so the
            # seed itself is always among the first records, even when the answer is cut to fit.
            ips = [ip for ip in self.addresses() if ipaddress.ip_address(ip).version == version]
            if ips:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, ANSWER_TTL, dns.rdataclass.IN, question.rdtype, ips[:MAX_SEED_ADDRESSES]))
        max_size = max(CLASSIC_UDP_SIZE, query.payload) if query.edns >= 0 else CLASSIC_UDP_SIZE
        return _fit(response, max_size)


def _fit(response: dns.message.Message, max_size: int) -> bytes:
    """Drop answer records until the packet fits the client's UDP size (fewer seeds beat truncation)."""
    while True:
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            if not response.answer or len(response.answer[0]) <= 1:
                response.answer.clear()
                response.flags |= dns.flags.TC
                continue
            rrset = response.answer[0]
            smaller = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
            smaller.update_ttl(rrset.ttl)
            for record in list(rrset)[:-1]:
                smaller.add(record)
            response.answer[0] = smaller


class _SeedRequestHandler(socketserver.BaseRequestHandler):
    server: DnsSeedServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.answer(data)
        if reply is not None:
            try:
                sock.sendto(reply, self.client_address)
            except OSError:
                pass  # the asker went away; UDP has no one to tell


def seed_listen_address(text: str) -> tuple[str, int]:
    """Validate --serve-dns HOST:PORT (an IP literal, since the seeder binds it)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{text!r} is not IP:PORT") from None
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r} needs a port from 1 to 65535")
    return host, int(port)
