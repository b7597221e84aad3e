"""Relay failures, throttling, control from other processes, storage failures and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.config import load_campaign
from mailblast.errors import ConfigError, StoreError
from mailblast.sink import ThreadedSink


class BrokenRelay:
    """A loopback TCP server that misbehaves: never greets, or drops the connection after 354."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        )
        self.server = future.result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.behaviour == "silent":
                await reader.read()  # accept, never greet, wait for the client to give up
                return
            writer.write(b"220 broken.example.net ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    return  # drop during DATA, before reading any of the message
                reply = b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n"
                writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def broken_relay() -> Iterator[Callable[[str], BrokenRelay]]:
    started: list[BrokenRelay] = []

    def start(behaviour: str) -> BrokenRelay:
        relay = BrokenRelay(behaviour)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def log_records(store: str, name: str = "spring-gala") -> list[dict[str, object]]:
    with blast.opened(store) as opened:
        row = opened.get_campaign(name)
        assert row is not None
        return list(opened.iter_log(row.id))


FAST_TIMEOUTS = {"connect_timeout": "1s", "command_timeout": "2s", "data_timeout": "2s"}


def test_failing_relays_spill_to_healthy_ones(
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
    broken_relay: Callable[[str], BrokenRelay],
) -> None:
    count = 3000
    good = start_sink(keep_messages=True)
    stopped = start_sink(keep_messages=True)
    silent = broken_relay("silent")
    dropper = broken_relay("drop")
    relays = [
        relay_block("good", good.port, max_connections=4),
        relay_block("stopped", stopped.port, max_connections=4),
        relay_block("silent", silent.port, max_connections=2, **FAST_TIMEOUTS),
        relay_block("dropper", dropper.port, max_connections=2, **FAST_TIMEOUTS),
    ]
    write_list(tmp_path / "attendees.csv", person_rows(count))
    campaign = load_campaign(write_campaign(tmp_path, relays))
    timer = threading.Timer(1.0, stopped.stop)
    timer.start()

    summary, _, _ = blast.send(campaign)
    timer.join()

    # Stopping a relay can cut a session after its final dot: such a message is unknown.
    unknown = summary.counts["unknown"]
    assert summary.counts["sent"] + unknown == count, summary.counts
    assert unknown <= 4
    assert summary.counts["bounced"] == 0
    received = Counter(
        r for sink in (good, stopped) for m in sink.stats.received for r in m.recipients
    )
    assert len(received) >= count - unknown
    assert max(received.values()) == 1
    assert stopped.stats.messages > 0
    deferred = Counter(r["relay"] for r in log_records(campaign.store) if r["type"] == "deferred")
    assert deferred["silent"] > 0
    assert deferred["dropper"] > 0
    assert silent.connections > 0
    assert dropper.connections > 0


def test_drop_after_dot_leaves_exactly_that_unknown(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    rows = person_rows(10)
    rows.append(["drop-after-dot-x@example.com", "X", "Y", "Gala", "10"])
    write_list(tmp_path / "attendees.csv", rows)
    relays = [relay_block("only", sink.port, max_connections=2, **FAST_TIMEOUTS)]
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 10
    assert summary.counts["unknown"] == 1
    with blast.opened(campaign.store) as store:
        row = store.get_campaign(campaign.name)
        assert row is not None
        unknown = store.message_states(row.id, "unknown")
    assert [entry[1] for entry in unknown] == ["drop-after-dot-x@example.com"]


def test_throttling_relay_delivers_everything(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(tempfail_every=50, keep_messages=True)
    rows = person_rows(600)
    rows += [[f"tempfail2-{i}@example.com", "G", "L", "Gala", str(i)] for i in range(5)]
    write_list(tmp_path / "attendees.csv", rows)
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 605
    assert sink.stats.closed_after_limit > 0
    received = Counter(r for m in sink.stats.received for r in m.recipients)
    assert len(received) == 605
    assert max(received.values()) == 1
    records = log_records(campaign.store)
    # A 421 may also land on this recipient's MAIL; only its RCPT replies are checked here.
    greylisted = [
        r
        for r in records
        if r["recipient"] == "tempfail2-0@example.com" and r["command"] in ("rcpt", "end-of-data")
    ]
    assert [r["type"] for r in greylisted] == ["deferred", "deferred", "sent"]
    assert [r["code"] for r in greylisted] == [451, 451, 250]
    assert any(r["code"] == 421 and r["type"] == "deferred" for r in records)


def locked_relay(port: int) -> str:
    """A relay block whose password (from MAILBLAST_TEST_PASSWORD) the test sets wrong."""
    return relay_block(
        "locked",
        port,
        username="blast",
        password_env="MAILBLAST_TEST_PASSWORD",
        allow_plaintext_auth=True,
    )


def test_auth_failure_takes_relay_out(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = start_sink()
    locked = start_sink(auth={"blast": "right"})
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "wrong")
    relays = [relay_block("good", good.port), locked_relay(locked.port)]
    write_list(tmp_path / "attendees.csv", person_rows(200))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 200
    assert good.stats.messages == 200
    auth = [r for r in log_records(campaign.store) if r["relay"] == "locked"]
    assert auth
    assert all(r["command"] == "auth" and r["code"] == 535 for r in auth)
    assert all(r["type"] == "deferred" for r in auth)
    assert all("wrong" not in str(r["text"]) for r in auth)


def test_no_usable_relay_pauses_campaign(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = start_sink(auth={"blast": "right"})
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "wrong")
    relays = [locked_relay(locked.port)]
    write_list(tmp_path / "attendees.csv", person_rows(20))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign, wait=False)

    assert summary.status == "paused"
    assert summary.status_reason is not None
    assert "no relay is usable" in summary.status_reason
    assert "locked" in summary.status_reason
    assert summary.counts["queued"] == 20
    assert locked.stats.messages == 0

    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "right")
    with blast.opened(campaign.store) as store:
        row = blast.require_campaign(store, campaign.name)
        store.set_status(row.id, "active", None, time.time())
    resumed, _, _ = blast.send(campaign)
    assert resumed.status == "done"
    assert resumed.counts["sent"] == 20
    assert locked.stats.messages == 20


def test_plaintext_auth_refused_without_tls(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(auth={"blast": "right"})
    relays = [relay_block("clear", sink.port, username="blast", password_env="UNUSED")]
    write_list(tmp_path / "attendees.csv", person_rows(3))

    with pytest.raises(ConfigError, match="would send the AUTH password in clear"):
        load_campaign(write_campaign(tmp_path, relays))
    assert sink.stats.connections == 0


def test_error_budget_pauses_campaign(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    rows = [[f"bounce-{i}@example.com", "B", "L", "Gala", str(i)] for i in range(60)]
    rows += person_rows(200)
    write_list(tmp_path / "attendees.csv", rows)
    sending = 'error_budget = 0.3\nerror_window = 50\nretry_initial = "200ms"\n'
    relays = [relay_block("only", sink.port, max_connections=1)]
    campaign = load_campaign(write_campaign(tmp_path, relays, sending=sending))

    summary, _, _ = blast.send(campaign, wait=False)

    assert summary.status == "paused"
    assert summary.status_reason is not None
    assert "over the error budget of 30%" in summary.status_reason
    assert summary.counts["queued"] > 100


def test_unset_password_variable_stops_before_load(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = start_sink()
    monkeypatch.delenv("MAILBLAST_TEST_UNSET", raising=False)
    relays = [
        relay_block(
            "only",
            sink.port,
            username="u",
            password_env="MAILBLAST_TEST_UNSET",
            allow_plaintext_auth=True,
        )
    ]
    write_list(tmp_path / "attendees.csv", person_rows(3))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    with pytest.raises(ConfigError, match="MAILBLAST_TEST_UNSET is not set"):
        blast.send(campaign)
    assert not Path(campaign.store).exists()


def test_full_disk_stops_sending(tmp_path: Path, start_sink: Callable[..., ThreadedSink]) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(3000))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))
    fill_after = 500

    def limit_pages(engine: object) -> None:
        def watch() -> None:
            while sink.stats.messages < fill_after:
                time.sleep(0.005)
            db = engine.store.db  # type: ignore[attr-defined]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")

        threading.Thread(target=watch, daemon=True).start()

    with pytest.raises(
        StoreError, match=r"failed in store .*mailblast\.db: database or disk is full"
    ):
        blast.send(campaign, on_start=limit_pages)

    db = sqlite3.connect(campaign.store)
    recorded = db.execute(
        "SELECT count(*) FROM messages WHERE state = 'sent' OR in_flight = 1"
    ).fetchone()[0]
    db.close()
    assert sink.stats.messages >= fill_after
    assert sink.stats.messages <= recorded
    assert sink.stats.messages < 3000


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailblast.cli.main", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def status(store: str) -> dict[str, object]:
    result = run_cli("status", "spring-gala", "--store", store, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@contextlib.contextmanager
def running_sender(campaign: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `mailblast send` in a child process; kill it if the test leaves it running."""
    command = [sys.executable, "-m", "mailblast.cli.main", "send", str(campaign)]
    with open(log, "wb") as handle:
        sender = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        yield sender
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def slow_campaign(tmp_path: Path, sink: ThreadedSink, count: int = 20000) -> Path:
    write_list(tmp_path / "attendees.csv", person_rows(count))
    relays = [relay_block("only", sink.port, max_connections=2, rate="300/s")]
    return write_campaign(tmp_path, relays)


def test_pause_resume_cancel_from_other_process(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    campaign = slow_campaign(tmp_path, sink)
    store = str(tmp_path / "mailblast.db")
    with running_sender(campaign, tmp_path / "send.log") as sender:
        wait_for(lambda: sink.stats.messages > 100)
        assert run_cli("pause", "spring-gala", "--store", store).returncode == 0
        time.sleep(2.5)
        paused_at = sink.stats.messages
        time.sleep(1.0)
        assert sink.stats.messages == paused_at
        counts = status(store)["counts"]
        assert isinstance(counts, dict)
        assert counts["sending"] == 0

        assert run_cli("resume", "spring-gala", "--store", store).returncode == 0
        wait_for(lambda: sink.stats.messages > paused_at + 100)

        assert run_cli("cancel", "spring-gala", "--store", store, "--yes").returncode == 0
        assert sender.wait(timeout=30) == 0
    final = status(store)
    counts = final["counts"]
    assert isinstance(counts, dict)
    assert final["status"] == "cancelled"
    assert counts["sent"] == sink.stats.messages
    assert counts["cancelled"] > 0
    assert counts["sent"] + counts["cancelled"] == 20000


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_gracefully(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], signal_number: int
) -> None:
    sink = start_sink()
    campaign = slow_campaign(tmp_path, sink)
    store = str(tmp_path / "mailblast.db")
    with running_sender(campaign, tmp_path / "send.log") as sender:
        wait_for(lambda: sink.stats.messages > 100)
        os.kill(sender.pid, signal_number)
        assert sender.wait(timeout=30) == 130
    final = status(store)
    counts = final["counts"]
    assert isinstance(counts, dict)
    assert counts["sending"] == 0
    assert counts["unknown"] == 0
    assert counts["sent"] == sink.stats.messages
    assert counts["queued"] + counts["sent"] == 20000
    assert final["runs"] == []


def test_second_sigint_stops_at_once_safely(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(keep_messages=True)
    campaign = slow_campaign(tmp_path, sink, count=3000)
    store = str(tmp_path / "mailblast.db")
    with running_sender(campaign, tmp_path / "send.log") as sender:
        wait_for(lambda: sink.stats.messages > 100)
        os.kill(sender.pid, signal.SIGINT)
        time.sleep(0.05)
        os.kill(sender.pid, signal.SIGINT)
        sender.wait(timeout=30)

    result = run_cli("send", str(campaign))
    assert result.returncode == 0, result.stderr
    retry = run_cli("retry", "spring-gala", "--store", store, "--unknown")
    assert retry.returncode == 0
    assert run_cli("send", str(campaign)).returncode == 0

    final = status(store)
    counts = final["counts"]
    assert isinstance(counts, dict)
    assert counts["sent"] == 3000
    received = Counter(r for m in sink.stats.received for r in m.recipients)
    assert len(received) == 3000
    unknown = {str(r["recipient"]) for r in log_records(store) if r["type"] == "unknown"}
    assert [r for r, n in received.items() if n > 1 and r not in unknown] == []


def test_paused_campaign_sends_nothing(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(50))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))
    store, row, _ = blast.prepare(campaign)
    store.set_status(row.id, "paused", "paused by the operator", time.time())
    store.close()

    summary, stats, _ = blast.send(campaign, wait=False)

    assert sink.stats.messages == 0
    assert summary.status == "paused"
    assert summary.counts["queued"] == 50
    assert stats.stop_reason == "paused"
