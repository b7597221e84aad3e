"""STARTTLS and implicit TLS with verified certificates, AUTH, and SMTPUTF8 routing."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.config import load_campaign
from mailblast.sink import ThreadedSink

# A failed TLS handshake can leave a socket to the garbage collector in Python 3.11's asyncio,
# as noted in relay/connection.py. Its ResourceWarning may surface in any test of this module.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def collect_leaked_sockets() -> Iterator[None]:
    """Collect garbage before the test ends, so that warning is raised (and ignored) here."""
    yield
    gc.collect()


@pytest.fixture
def certificate_authority(tmp_path: Path) -> tuple[trustme.CA, ssl.SSLContext, Path]:
    """A private CA, a server context with a certificate for 127.0.0.1, and the CA file."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return authority, server, ca_file


def log_texts(store: str) -> list[str]:
    with blast.opened(store) as opened:
        row = opened.get_campaign("spring-gala")
        assert row is not None
        return [str(record["text"]) for record in opened.iter_log(row.id)]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_with_private_ca_and_auth(
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
    certificate_authority: tuple[trustme.CA, ssl.SSLContext, Path],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    _, server, ca_file = certificate_authority
    sink = start_sink(
        tls_context=server,
        require_starttls=mode == "starttls",
        implicit_tls=mode == "implicit",
        auth={"blast": "s3cret"},
        keep_messages=True,
    )
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "s3cret")
    relays = [
        relay_block(
            "secure",
            sink.port,
            tls=mode,
            ca_file=str(ca_file),
            username="blast",
            password_env="MAILBLAST_TEST_PASSWORD",
            max_connections=2,
            max_messages_per_connection=10,
        )
    ]
    write_list(tmp_path / "attendees.csv", person_rows(30))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 30
    assert sink.stats.messages == 30
    assert 3 <= sink.stats.connections <= 5
    assert all("s3cret" not in text for text in log_texts(campaign.store))


def test_unverified_certificate_not_used(
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
    certificate_authority: tuple[trustme.CA, ssl.SSLContext, Path],
) -> None:
    _, server, _ = certificate_authority
    sink = start_sink(tls_context=server, require_starttls=True)
    relays = [relay_block("untrusted", sink.port, tls="starttls", max_connections=1)]
    write_list(tmp_path / "attendees.csv", person_rows(2))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign, wait=False)

    assert summary.counts["sent"] == 0
    assert sink.stats.messages == 0
    assert summary.status == "paused"
    assert summary.status_reason is not None
    assert "failed verification" in summary.status_reason
    assert "ca_file" in summary.status_reason
    assert any("failed verification" in text for text in log_texts(campaign.store))


def test_smtputf8_address_routed_to_capable_relay(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    plain = start_sink(smtputf8=False, keep_messages=True)
    capable = start_sink(smtputf8=True, keep_messages=True)
    rows = person_rows(20)
    rows.append(["ñandú@example.com", "Ñandú", "Pérez", "Gala", "20"])
    write_list(tmp_path / "attendees.csv", rows)
    relays = [
        relay_block("plain", plain.port, weight=5),
        relay_block("capable", capable.port, weight=1),
    ]
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 21, [t for t in log_texts(campaign.store) if "OK" not in t]
    utf8 = [m for m in capable.stats.received if m.recipients == ("ñandú@example.com",)]
    assert len(utf8) == 1
    assert utf8[0].smtputf8
    assert all(m.recipients != ("ñandú@example.com",) for m in plain.stats.received)


def test_smtputf8_address_fails_without_capable_relay(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    plain = start_sink(smtputf8=False)
    rows = person_rows(3)
    rows.append(["ñandú@example.com", "Ñandú", "Pérez", "Gala", "3"])
    write_list(tmp_path / "attendees.csv", rows)
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("plain", plain.port)]))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 3
    assert summary.counts["failed"] == 1
    texts = log_texts(campaign.store)
    assert any("no relay offers SMTPUTF8" in text for text in texts)


def test_starttls_not_offered_pauses_campaign(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(3))
    relays = [relay_block("plain", sink.port, tls="starttls")]
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign, wait=False)

    assert summary.status == "paused"
    assert summary.status_reason is not None
    assert "STARTTLS" in summary.status_reason
    assert summary.counts["queued"] == 3
    assert summary.counts["sending"] == 0
    assert sink.stats.messages == 0
