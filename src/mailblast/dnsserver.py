"""A small authoritative DNS server on loopback, for tests and local checks.

It answers from records held in memory, over UDP and TCP on the same port, each in a thread.
A UDP answer larger than the client's payload size is sent truncated (TC set), so resolvers
retry over TCP as they would against a real server. There is no recursion, no wildcard and no
CNAME chasing: a name either has the queried records, has other records (NODATA), or does not
exist (NXDOMAIN).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

logger = logging.getLogger("mailblast.dnsserver")

TTL = 60
UDP_PAYLOAD_WITHOUT_EDNS = 512  # RFC 1035 section 4.2.1
TCP_MAX_SIZE = 65535
BIND_ATTEMPTS = 20
POLL_INTERVAL = 0.05  # seconds; how soon stop() returns
RecordKey = tuple[dns.name.Name, dns.rdatatype.RdataType]


class RecordSet:
    """The records a server answers from, keyed by owner name and type; safe across threads."""

    def __init__(self) -> None:
        self._records: dict[RecordKey, dns.rrset.RRset] = {}
        self._lock = threading.Lock()

    def add(self, name: str, rdtype: str, *rdatas: str) -> None:
        """Add records in presentation format, e.g. ``add("example.com.", "MX", "10 mx1")``.

        Names are absolute whether or not they end in a dot. A TXT rdata is given quoted
        (``'"v=spf1 -all"'``), and several quoted strings make one TXT record.
        """
        owner = dns.name.from_text(name)
        new = dns.rrset.from_text_list(owner, TTL, dns.rdataclass.IN, rdtype, list(rdatas))
        with self._lock:
            existing = self._records.get((owner, new.rdtype))
            if existing is None:
                self._records[(owner, new.rdtype)] = new
            else:
                existing.update(new)

    def remove(self, name: str, rdtype: str) -> None:
        """Delete every record of this name and type."""
        key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        with self._lock:
            self._records.pop(key, None)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """Build the authoritative response to one query."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        with self._lock:
            found = self._records.get((question.name, question.rdtype))
            name_exists = any(owner == question.name for owner, _ in self._records)
        if found is not None:
            response.answer.append(found)
        elif not name_exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response


def _wire_response(records: RecordSet, data: bytes, max_size: int | None) -> bytes | None:
    """Return the wire response to a wire query, or None for a packet that is not a query."""
    try:
        query = dns.message.from_wire(data)
    except dns.exception.DNSException as error:
        logger.debug("ignoring a malformed DNS packet: %s", error)
        return None
    response = records.answer(query)
    if max_size is None:
        return response.to_wire(max_size=TCP_MAX_SIZE)
    payload = max(query.payload, UDP_PAYLOAD_WITHOUT_EDNS) if query.edns >= 0 else max_size
    try:
        return response.to_wire(max_size=payload)
    except dns.exception.TooBig:
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire()


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        wire = _wire_response(self.server.records, data, UDP_PAYLOAD_WITHOUT_EDNS)
        if wire is not None:
            sock.sendto(wire, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        # RFC 1035 section 4.2.2: each message is preceded by its two-byte length.
        while header := self._read(2):
            data = self._read(struct.unpack("!H", header)[0])
            wire = _wire_response(self.server.records, data, None) if data else None
            if wire is None:
                return
            self.request.sendall(struct.pack("!H", len(wire)) + wire)

    def _read(self, size: int) -> bytes:
        chunks = b""
        while len(chunks) < size:
            chunk = self.request.recv(size - len(chunks))
            if not chunk:
                return b""
            chunks += chunk
        return chunks


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], records: RecordSet) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.records = records
        super().__init__(address, _UdpHandler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], records: RecordSet) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.records = records
        super().__init__(address, _TcpHandler)


class LocalDnsServer:
    """A DNS server on ``host`` (loopback) answering from :attr:`records` over UDP and TCP.

    Use it as a context manager; :attr:`port` is chosen by the system, and
    :attr:`nameserver` is the ``IP:PORT`` form that ``mailblast dns check --nameserver`` takes.
    """

    def __init__(self, host: str = "127.0.0.1", records: RecordSet | None = None) -> None:
        self.host = host
        self.records = records if records is not None else RecordSet()
        self._servers: list[socketserver.BaseServer] = []
        self.port = 0

    @property
    def nameserver(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        self._servers = list(self._bind())
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, args=(POLL_INTERVAL,), name="dns-server", daemon=True
            )
            thread.start()
        logger.debug("DNS server listening on %s (UDP and TCP)", self.nameserver)

    def _bind(self) -> tuple[_UdpServer, _TcpServer]:
        """Bind UDP to a free port, then TCP to the same one; retry when TCP's is taken."""
        for _ in range(BIND_ATTEMPTS):
            udp = _UdpServer((self.host, 0), self.records)
            self.port = udp.server_address[1]
            try:
                return udp, _TcpServer((self.host, self.port), self.records)
            except OSError as error:
                udp.server_close()
                last_error = error
        raise last_error

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> LocalDnsServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
