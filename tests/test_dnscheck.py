"""``mailblast dns check`` against a DNS server the test starts on 127.0.0.1."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
import spf  # pyspf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mailblast import dnscheck
from mailblast.cli.main import main
from mailblast.dkimkey import LocalDkimKey, load_local_key
from mailblast.dnscheck import (
    Finding,
    Lookups,
    Status,
    check_dkim,
    check_dmarc,
    check_domain,
    make_resolver,
)
from mailblast.dnsserver import LocalDnsServer
from mailblast.nameserver import NameserverUnreachable
from mailblast.spfpolicy import check_host

DOMAIN = "example.com"
RELAY_IPS = ["192.0.2.25", "192.0.2.50", "2001:db8::25"]


def write_key(path: Path, key: PrivateKeyTypes) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    return path


@pytest.fixture(scope="module")
def rsa_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return write_key(tmp_path_factory.mktemp("keys") / "s1.pem", key)


@pytest.fixture(scope="module")
def other_rsa_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return write_key(tmp_path_factory.mktemp("keys") / "other.pem", key)


def txt(value: str) -> str:
    """Quote a TXT value as several strings of at most 200 characters, as a zone file would."""
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))


def publish_correct_setup(server: LocalDnsServer, dkim: LocalDkimKey) -> None:
    records = server.records
    records.add("example.com", "TXT", txt("v=spf1 include:_spf.example.com mx -all"))
    records.add("example.com", "TXT", txt("google-site-verification=abc"))
    records.add("_spf.example.com", "TXT", txt("v=spf1 ip4:192.0.2.16/28 ip6:2001:db8::/64 ~all"))
    records.add("example.com", "MX", "10 mx1.example.com.")
    records.add("mx1.example.com", "A", "192.0.2.50")
    records.add("s1._domainkey.example.com", "TXT", txt(dkim.record()))
    records.add("_dmarc.example.com", "TXT", txt("v=DMARC1; p=reject; rua=mailto:d@example.com"))
    for address, host in zip(RELAY_IPS, ("relay1", "mx1", "relay6"), strict=True):
        reverse = ipaddress.ip_address(address).reverse_pointer
        records.add(reverse, "PTR", f"{host}.example.com.")
    records.add("relay1.example.com", "A", "192.0.2.25")
    records.add("relay6.example.com", "AAAA", "2001:db8::25")


@pytest.fixture
def server(rsa_key_file: Path) -> Iterator[LocalDnsServer]:
    with LocalDnsServer() as dns_server:
        publish_correct_setup(dns_server, load_local_key(rsa_key_file))
        yield dns_server


def run_check(
    server: LocalDnsServer, key_file: Path | None, relay_ips: list[str] = RELAY_IPS
) -> list[Finding]:
    lookups = Lookups(make_resolver(server.nameserver))
    local = load_local_key(key_file) if key_file else None
    return check_domain(DOMAIN, lookups, "s1", local, relay_ips)


def only(findings: list[Finding], check: str, subject: str | None = None) -> Finding:
    matching = [f for f in findings if f.check == check and subject in (None, f.subject)]
    assert len(matching) == 1, matching
    return matching[0]


def test_correct_setup_all_ok(server: LocalDnsServer, rsa_key_file: Path) -> None:
    findings = run_check(server, rsa_key_file)

    assert [f for f in findings if f.status is not Status.OK] == []
    assert {f.check for f in findings} == {"SPF", "DKIM", "DMARC", "MX", "PTR"}
    assert len([f for f in findings if f.check == "SPF"]) == 1 + len(RELAY_IPS)
    assert "matches" in only(findings, "DKIM").detail
    assert "forward-confirmed" in only(findings, "PTR", "2001:db8::25").detail


def test_ed25519_key_matches(server: LocalDnsServer, tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    local = load_local_key(key_file)
    server.records.remove("s1._domainkey.example.com", "TXT")
    server.records.add("s1._domainkey.example.com", "TXT", txt(local.record()))

    finding = only(run_check(server, key_file), "DKIM")

    assert finding.status is Status.OK
    assert "Ed25519" in finding.detail
    assert len(local.key.data) == 32


def test_rsa_pkcs1_record_matches(server: LocalDnsServer, rsa_key_file: Path) -> None:
    public = load_pem_private_key(rsa_key_file.read_bytes(), None).public_key()
    pkcs1 = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    server.records.remove("s1._domainkey.example.com", "TXT")
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}"
    server.records.add("s1._domainkey.example.com", "TXT", txt(record))

    finding = only(run_check(server, rsa_key_file), "DKIM")

    assert finding.status is Status.OK
    assert "RSA 2048-bit key matches" in finding.detail


def test_wrong_dkim_key_error(server: LocalDnsServer, other_rsa_key_file: Path) -> None:
    finding = only(run_check(server, other_rsa_key_file), "DKIM")

    assert finding.status is Status.ERROR
    assert "is not the public key of" in finding.detail
    assert load_local_key(other_rsa_key_file).record() in finding.fix


def test_missing_dkim_record_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("s1._domainkey.example.com", "TXT")

    finding = only(run_check(server, rsa_key_file), "DKIM")

    assert finding.status is Status.ERROR
    assert finding.fix.startswith('publish s1._domainkey.example.com TXT "v=DKIM1; k=rsa; p=')


def test_revoked_dkim_key_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("s1._domainkey.example.com", "TXT")
    server.records.add("s1._domainkey.example.com", "TXT", '"v=DKIM1; k=rsa; p="')

    finding = only(run_check(server, rsa_key_file), "DKIM")

    assert finding.status is Status.ERROR
    assert "revoked" in finding.detail


def test_missing_dmarc_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("_dmarc.example.com", "TXT")

    finding = only(run_check(server, rsa_key_file), "DMARC")

    assert finding.status is Status.ERROR
    assert finding.detail == "no DMARC record"
    assert finding.fix.startswith('publish _dmarc.example.com TXT "v=DMARC1; p=quarantine')


def test_dmarc_policy_none_warning(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("_dmarc.example.com", "TXT")
    server.records.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=none"')

    finding = only(run_check(server, rsa_key_file), "DMARC")

    assert finding.status is Status.WARNING
    assert "p=quarantine or p=reject" in finding.fix


def test_dmarc_of_organizational_domain(server: LocalDnsServer) -> None:
    # mail.example.co.uk has no record of its own; its organizational domain is example.co.uk,
    # below the two-label public suffix co.uk, which is never asked.
    server.records.add("_dmarc.example.co.uk", "TXT", '"v=DMARC1; p=reject"')
    server.records.add("_dmarc.co.uk", "TXT", '"v=DMARC1; p=none"')
    lookups = Lookups(make_resolver(server.nameserver))

    findings = check_dmarc("mail.example.co.uk", lookups)

    assert [(f.subject, f.status) for f in findings] == [("_dmarc.example.co.uk", Status.OK)]


def test_spf_without_relay_ip_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    findings = run_check(server, rsa_key_file, ["192.0.2.25", "192.0.2.99"])

    missing = only(findings, "SPF", "example.com for 192.0.2.99")
    assert missing.status is Status.ERROR
    assert "result fail" in missing.detail
    assert missing.fix == "add ip4:192.0.2.99 to the SPF record of example.com before its all term"
    assert only(findings, "SPF", "example.com for 192.0.2.25").status is Status.OK


def test_missing_spf_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("example.com", "TXT")

    finding = only(run_check(server, rsa_key_file), "SPF")

    assert finding.status is Status.ERROR
    assert finding.fix.startswith('publish example.com TXT "v=spf1 ip4:192.0.2.25 ')


def test_too_many_spf_lookups_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("example.com", "TXT")
    server.records.add("example.com", "TXT", '"v=spf1 include:l1.example.com -all"')
    for level in range(1, 12):
        server.records.add(
            f"l{level}.example.com", "TXT", f'"v=spf1 include:l{level + 1}.example.com"'
        )
    server.records.add("l12.example.com", "TXT", '"v=spf1 ip4:192.0.2.25 -all"')

    findings = run_check(server, rsa_key_file, ["192.0.2.25"])

    count = only(findings, "SPF", "example.com")
    assert count.status is Status.ERROR
    assert "needs 12 DNS lookups, more than the limit of 10" in count.detail
    assert "ip4:/ip6:" in count.fix
    evaluation = only(findings, "SPF", "example.com for 192.0.2.25")
    assert evaluation.status is Status.ERROR
    assert "result permerror" in evaluation.detail


def test_spf_plus_all_warning(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("example.com", "TXT")
    server.records.add("example.com", "TXT", '"v=spf1 ip4:192.0.2.25 +all"')

    findings = run_check(server, rsa_key_file, ["192.0.2.25"])

    warning = [f for f in findings if f.status is Status.WARNING and f.check == "SPF"]
    assert len(warning) == 1
    assert "+all authorizes every host" in warning[0].detail
    assert warning[0].fix.startswith("end the record with -all")


def test_spf_void_lookups_permerror(server: LocalDnsServer) -> None:
    record = '"v=spf1 a:gone1.example.com a:gone2.example.com a:gone3.example.com -all"'
    server.records.add("void.example.com", "TXT", record)
    resolver = make_resolver(server.nameserver)

    evaluation = check_host(resolver, ipaddress.ip_address("192.0.2.25"), "void.example.com")

    assert evaluation.result == "permerror"
    assert "Void lookup limit of 2 exceeded" in evaluation.explanation


def test_multiple_spf_records_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.add("example.com", "TXT", '"v=spf1 ip4:192.0.2.25 -all"')

    finding = only(run_check(server, rsa_key_file), "SPF")

    assert finding.status is Status.ERROR
    assert "Two or more type TXT spf records found" in finding.detail
    assert finding.fix.startswith("keep exactly one TXT record starting with v=spf1")


def test_missing_ptr_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("25.2.0.192.in-addr.arpa", "PTR")

    finding = only(run_check(server, rsa_key_file), "PTR", "192.0.2.25")

    assert finding.status is Status.ERROR
    assert finding.detail == "no PTR record at 25.2.0.192.in-addr.arpa."
    assert "PTR record" in finding.fix


def test_ptr_not_forward_confirmed_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("relay1.example.com", "A")
    server.records.add("relay1.example.com", "A", "192.0.2.26")

    finding = only(run_check(server, rsa_key_file), "PTR", "192.0.2.25")

    assert finding.status is Status.ERROR
    assert "does not resolve back" in finding.detail
    assert finding.fix.startswith("publish relay1.example.com A 192.0.2.25")


def test_missing_mx_error(server: LocalDnsServer, rsa_key_file: Path) -> None:
    server.records.remove("example.com", "MX")

    finding = only(run_check(server, rsa_key_file, []), "MX")

    assert finding.status is Status.ERROR
    assert "MX records" in finding.fix


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """Bind a loopback UDP port that never answers; return it as IP:PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{silent.getsockname()[1]}"


def test_silent_nameserver_stops_check(silent_nameserver: str) -> None:
    lookups = Lookups(make_resolver(silent_nameserver, timeout=0.2))
    started = time.monotonic()

    with pytest.raises(NameserverUnreachable) as caught:
        check_domain(DOMAIN, lookups, "s1", None, ["192.0.2.25"])

    # The first lookup (the SPF record) fails, and no further check waits its timeout.
    assert time.monotonic() - started < 1.0
    assert caught.value.nameservers == silent_nameserver
    assert caught.value.lookup == f"{DOMAIN} TXT"
    assert caught.value.reason == "timed out after 0.2 s"


def test_silent_nameserver_dkim_lookup(silent_nameserver: str) -> None:
    lookups = Lookups(make_resolver(silent_nameserver, timeout=0.2))

    with pytest.raises(NameserverUnreachable) as caught:
        check_dkim(DOMAIN, lookups, "s1", None)

    assert caught.value.lookup == f"s1._domainkey.{DOMAIN} TXT"


def test_servfail_stays_finding() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        answering = threading.Thread(target=answer_servfail, args=(server,), daemon=True)
        answering.start()
        lookups = Lookups(make_resolver(f"127.0.0.1:{server.getsockname()[1]}", timeout=2))

        findings = check_dkim(DOMAIN, lookups, "s1", None)

        server.sendto(b"", server.getsockname())  # an empty datagram ends the thread
        answering.join(2)

    assert len(findings) == 1
    assert findings[0].status is Status.ERROR
    assert "SERVFAIL" in findings[0].detail


def answer_servfail(server: socket.socket) -> None:
    while True:
        data, peer = server.recvfrom(4096)
        if not data:
            return
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode(dns.rcode.SERVFAIL)
        server.sendto(response.to_wire(), peer)


def test_cli_silent_nameserver_exit_2(
    silent_nameserver: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(dnscheck, "LOOKUP_TIMEOUT", 0.2)

    status = main(["dns", "check", DOMAIN, "--nameserver", silent_nameserver])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert f"nameserver {silent_nameserver} did not answer" in captured.err
    assert "timed out after 0.2 s" in captured.err
    assert "or omit --nameserver to use the system's resolver" in captured.err
    assert captured.err.count("timed out") == 1


def publish_term_targets(server: LocalDnsServer) -> None:
    records = server.records
    records.add("t.example.com", "A", "192.0.2.10")
    records.add("t.example.com", "MX", "10 mx6.example.com.")
    records.add("mx6.example.com", "AAAA", "2001:db8:6::1")
    records.add("mail.example.com", "A", "192.0.2.40")
    records.add("mail.example.com", "AAAA", "2001:db8:4::1")


@pytest.mark.parametrize(
    ("word", "inside", "result", "outside", "otherwise"),
    [
        ("ip4:192.0.2.0/24", "192.0.2.200", "pass", "192.0.3.1", "neutral"),
        ("-ip6:2001:db8::/32", "2001:db8:ffff::1", "fail", "2001:db9::1", "neutral"),
        ("a", "192.0.2.10", "pass", "192.0.2.11", "neutral"),
        ("~a/24", "192.0.2.99", "softfail", "192.0.3.10", "neutral"),
        ("mx//64", "2001:db8:6::ffff", "pass", "2001:db8:7::1", "neutral"),
        ("a:mail.example.com/24//64", "192.0.2.1", "pass", "192.0.3.40", "neutral"),
        ("a:mail.example.com/24//64", "2001:db8:4::ff", "pass", "2001:db8:5::1", "neutral"),
        ("redirect=_spf.example.com", "192.0.2.20", "pass", "192.0.2.99", "softfail"),
    ],
)
def test_spf_term_evaluation(
    server: LocalDnsServer, word: str, inside: str, result: str, outside: str, otherwise: str
) -> None:
    publish_term_targets(server)
    # A redirect= applies only when no mechanism matches, so that record has no ?all.
    record = f"v=spf1 {word}" if word.startswith("redirect=") else f"v=spf1 {word} ?all"
    server.records.add("t.example.com", "TXT", txt(record))
    resolver = make_resolver(server.nameserver)

    matched = check_host(resolver, ipaddress.ip_address(inside), "t.example.com")
    unmatched = check_host(resolver, ipaddress.ip_address(outside), "t.example.com")

    assert matched.result == result
    assert unmatched.result == otherwise


def test_spf_redirect_and_a_mechanism(server: LocalDnsServer) -> None:
    server.records.add("b.example.com", "TXT", '"v=spf1 redirect=c.example.com"')
    server.records.add("c.example.com", "TXT", '"v=spf1 a:relay1.example.com/30 -all"')
    resolver = make_resolver(server.nameserver)

    inside = check_host(resolver, ipaddress.ip_address("192.0.2.27"), "b.example.com")
    outside = check_host(resolver, ipaddress.ip_address("192.0.2.28"), "b.example.com")

    assert inside.result == "pass"
    assert inside.lookups == 2  # redirect= and a: each count
    assert outside.result == "fail"


def test_spf_lookups_restored_after_check(server: LocalDnsServer) -> None:
    original = spf.DNSLookup
    resolver = make_resolver(server.nameserver)

    evaluation = check_host(resolver, ipaddress.ip_address("192.0.2.25"), DOMAIN)

    assert evaluation.result == "pass"
    assert spf.DNSLookup is original


def test_server_answers_large_txt_over_tcp(server: LocalDnsServer) -> None:
    long_value = "v=DKIM1; k=rsa; p=" + "A" * 1400
    server.records.add("big.example.com", "TXT", txt(long_value))
    query = dns.message.make_query("big.example.com", "TXT")

    udp = dns.query.udp(query, server.host, port=server.port, timeout=5)
    tcp = dns.query.tcp(query, server.host, port=server.port, timeout=5)

    assert udp.flags & dns.flags.TC
    assert b"".join(tcp.answer[0][0].strings).decode() == long_value


def test_cli_correct_setup_json(
    server: LocalDnsServer, rsa_key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["dns", "check", DOMAIN, "--selector", "s1", "--dkim-key", str(rsa_key_file)]
    arguments += ["--nameserver", server.nameserver, "--json"]
    for address in RELAY_IPS:
        arguments += ["--relay-ip", address]

    status = main(arguments)

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["errors"] == 0
    assert {finding["status"] for finding in document["findings"]} == {"ok"}


def test_cli_table_and_exit_status(
    server: LocalDnsServer, rsa_key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.records.remove("_dmarc.example.com", "TXT")
    arguments = ["dns", "check", DOMAIN, "--selector", "s1", "--relay-ip", "192.0.2.25"]

    status = main([*arguments, "--nameserver", server.nameserver])

    output = capsys.readouterr().out
    assert status == 1
    assert "no DMARC record" in output
    assert "1 error, 0 warnings" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nameserver", "dns.example.net"], "invalid nameserver 'dns.example.net'"),
        (["--nameserver", "127.0.0.1:99999"], "invalid nameserver '127.0.0.1:99999'"),
        (["--relay-ip", "relay1", "--nameserver", "127.0.0.1:53"], "invalid relay IP 'relay1'"),
        (["--dkim-key", "key.pem", "--nameserver", "127.0.0.1:53"], "--dkim-key needs --selector"),
        (
            ["--selector", "s1", "--dkim-key", "missing.pem", "--nameserver", "127.0.0.1:53"],
            "cannot read DKIM key file missing.pem",
        ),
    ],
)
def test_cli_bad_input(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["dns", "check", DOMAIN, *arguments])

    assert status == 2
    assert message in capsys.readouterr().err
