"""Campaigns on a PostgreSQL store: the send command, then workers on several processes."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast, worker
from mailblast.cli.main import main
from mailblast.cli.progress import _fleet_line, _status_line
from mailblast.cli.status import describe_run
from mailblast.config import load_campaign
from mailblast.engine import RunStats
from mailblast.sink import ThreadedSink
from mailblast.store import open_store


def test_send_command_on_postgres(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    sink = start_sink(keep_messages=True)
    write_list(tmp_path / "attendees.csv", [*person_rows(300), ["not-an-address", "", "", "", ""]])
    relays = [relay_block("sink", sink.port, max_connections=3)]
    campaign_file = write_campaign(tmp_path, relays)

    assert main(["send", str(campaign_file), "--store", postgres_url]) == 0

    by_recipient = Counter(r for m in sink.stats.received for r in m.recipients)
    assert len(by_recipient) == 300
    assert max(by_recipient.values()) == 1
    assert not (tmp_path / "mailblast.db").exists()
    with open_store(postgres_url) as store:
        row = store.get_campaign("spring-gala")
        assert row is not None
        assert row.status == "done"
        assert row.rows_rejected == 1
        assert store.counts(row.id) == {"sent": 300}
        assert sum(1 for record in store.iter_log(row.id) if record["type"] == "sent") == 300


def load_campaign_into(
    tmp_path: Path, store_url: str, relays: list[str], count: int, sending: str
) -> str:
    """Write a campaign on ``store_url`` and load its list without sending; return its name."""
    write_list(tmp_path / "attendees.csv", person_rows(count))
    campaign_file = write_campaign(tmp_path, relays, sending=sending)
    text = campaign_file.read_text(encoding="utf-8")
    campaign_file.write_text(text.replace('"mailblast.db"', f'"{store_url}"'), encoding="utf-8")
    campaign = load_campaign(campaign_file)
    store, row, _ = blast.prepare(campaign)
    with store:
        report = blast.load_if_needed(store, campaign, row)
    assert report is not None
    assert report.queued == count
    return campaign.name


def start_worker(store_url: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``mailblast worker`` in its own process, logging to ``log``."""
    command = [sys.executable, "-m", "mailblast.cli.main", "worker", "--store", store_url]
    with open(log, "wb") as output:
        return subprocess.Popen([*command, "--campaign", name], stdout=output, stderr=output)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def finish(workers: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float) -> None:
    """Wait for every worker to exit with status 0; show a failing worker's log."""
    for process, log in zip(workers, logs, strict=True):
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"worker did not finish:\n{log.read_text()[-3000:]}") from None
        assert status == 0, log.read_text()[-3000:]


def test_worker_sends_stored_campaign(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    sink = start_sink(keep_messages=True)
    relays = [relay_block("sink", sink.port, max_connections=2)]
    name = load_campaign_into(tmp_path, postgres_url, relays, 200, "")
    (tmp_path / "invite.txt").unlink()  # a worker needs only the store
    (tmp_path / "attendees.csv").unlink()

    summary, stats = worker.work(postgres_url)

    assert summary.name == name
    assert summary.status == "done"
    assert stats.outcomes["sent"] == 200
    assert len(received_counts([sink])) == 200
    assert sink.stats.max_concurrent_connections <= 2


def test_worker_needs_campaign_name(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(postgres_url) as store:
        for name in ("spring", "autumn"):
            store.upsert_campaign(name, {}, 1.0)

    assert main(["worker", "--store", postgres_url]) == 2

    error = capsys.readouterr().err
    assert "has 2 campaigns to send (spring, autumn)" in error
    assert "--campaign NAME" in error


def test_worker_unknown_campaign(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--store", postgres_url, "--campaign", "winter"]) == 2
    assert "campaign 'winter' not found" in capsys.readouterr().err


def test_worker_refused_beside_sqlite_sender(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = start_sink()
    store_path = str(tmp_path / "store.db")
    load_campaign_into(tmp_path, store_path, [relay_block("sink", sink.port)], 5, "")
    with open_store(store_path) as store:
        row = store.get_campaign("spring-gala")
        assert row is not None
        store.register_run("other-run", row.id, "sender.example.com", 4242, time.time())

    assert main(["worker", "--store", store_path]) == 2

    error = capsys.readouterr().err
    assert "is being sent" in error
    assert "pid 4242 on sender.example.com" in error
    assert "--processes N" in error
    assert sink.stats.messages == 0


def test_status_line_of_worker() -> None:
    run = {"id": "h:1:ab", "host": "h", "pid": 1, "started_at": 100.0, "heartbeat_at": 110.0}
    line = describe_run({**run, "sent": 5000}, now=112.0)
    assert line == "worker h:1:ab on h (pid 1): 5000 sent, 500 msg/s, last heartbeat 2s ago"


def test_progress_line_counts_deferrals() -> None:
    stats = RunStats()
    stats.outcomes.update({"sent": 900, "deferred": 40, "bounced": 10})
    line = _status_line(stats, total=1000, done_before=0, elapsed=10.0)
    # 40 deferred attempts, though at most 90 messages are still waiting.
    assert line.startswith("910/1000 final, sent 900, deferrals 40, bounced 10, failed 0,")


def test_progress_line_of_shared_store() -> None:
    stats = RunStats()
    stats.outcomes["sent"] = 40
    counts = {"sent": 3000, "queued": 2900, "failed": 100}
    line = _fleet_line(stats, counts, total=6000, done_before=1000, elapsed=10.0)
    assert line.startswith("3100/6000 final (all runs), sent 3000, deferred 0, bounced 0,")
    assert line.endswith("failed 100, 210 msg/s, ETA 13.8s, this run sent 40")


def test_workers_leave_no_idle_gap(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    """Idle sessions give their connection slots back, so no run waits seconds for one."""
    sink = start_sink()
    relays = [relay_block("sink", sink.port, max_connections=2)]
    name = load_campaign_into(tmp_path, postgres_url, relays, 600, "batch_size = 50\n")
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]

    workers = [start_worker(postgres_url, name, log) for log in logs]
    finish(workers, logs, timeout=120)

    assert sink.stats.messages == 600
    assert sink.stats.max_concurrent_connections <= 2
    with open_store(postgres_url) as store:
        row = store.get_campaign(name)
        assert row is not None
        times = sorted(r["time"] for r in store.iter_log(row.id) if r["type"] == "sent")
    # Before, a run's idle sessions kept the slots for IDLE_SESSION_SECONDS (5 s) each time.
    assert max(b - a for a, b in itertools.pairwise(times)) < 3.0


@pytest.mark.slow
def test_three_workers_send_each_once(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    count = 20_000
    caps = {"sink-a": 6, "sink-b": 3}
    sinks = {name: start_sink(keep_messages=True) for name in caps}
    relays = [
        relay_block(name, sinks[name].port, max_connections=cap, max_messages_per_connection=500)
        for name, cap in caps.items()
    ]
    # A lease long enough that no worker loses one on a busy machine: this test has no kill.
    name = load_campaign_into(tmp_path, postgres_url, relays, count, 'lease = "15s"\n')
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]

    workers = [start_worker(postgres_url, name, log) for log in logs]
    finish(workers, logs, timeout=400)

    received = [r for sink in sinks.values() for m in sink.stats.received for r in m.recipients]
    by_recipient = Counter(received)
    assert len(by_recipient) == count
    assert max(by_recipient.values()) == 1
    for relay, cap in caps.items():
        assert 0 < sinks[relay].stats.max_concurrent_connections <= cap, relay
    with open_store(postgres_url) as store:
        row = store.get_campaign(name)
        assert row is not None
        assert row.status == "done"
        assert store.counts(row.id) == {"sent": count}
        assert store.runs(row.id) == []
    assert all("sent" in log.read_text() for log in logs)


def received_counts(sinks: list[ThreadedSink]) -> Counter[str]:
    return Counter(r for sink in sinks for m in sink.stats.received for r in m.recipients)


@pytest.mark.slow
def test_killed_worker_taken_over(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    count = 6000
    sink = start_sink(keep_messages=True)
    relays = [relay_block("sink", sink.port, max_connections=6, rate="1500/s")]
    name = load_campaign_into(tmp_path, postgres_url, relays, count, 'lease = "3s"\n')
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [start_worker(postgres_url, name, log) for log in logs]
    wait_for(lambda: sink.stats.messages >= 1000, 60, "1000 messages at the sink")

    workers[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    workers[0].wait()
    finish(workers[1:], logs[1:], timeout=120)

    with open_store(postgres_url) as store:
        row = store.get_campaign(name)
        assert row is not None
        counts = store.counts(row.id)
        unknown = {m[1] for m in store.message_states(row.id, "unknown", limit=count)}
        log = list(store.iter_log(row.id))
    assert row.status == "done"
    assert counts.get("sent", 0) + counts.get("unknown", 0) == count
    by_recipient = received_counts([sink])
    # The killed worker may have marked a message in flight and died before its final dot
    # reached the sink: that message is unknown and may be missing, never anything else.
    missing = {row[0] for row in person_rows(count)} - set(by_recipient)
    assert missing <= unknown
    assert len(by_recipient) + len(missing) == count
    twice = {address for address, times in by_recipient.items() if times > 1}
    assert twice <= unknown
    assert time.monotonic() - killed_at >= 3  # the others waited for the lease
    takeover = [r for r in log if r["type"] == "unknown"]
    assert len(takeover) == counts.get("unknown", 0)
    assert any("took over" in path.read_text() for path in logs[1:])


def mailblast(*arguments: str) -> str:
    """Run a mailblast command in its own process, as an operator on another machine would."""
    command = [sys.executable, "-m", "mailblast.cli.main", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_pause_reaches_every_worker(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    count = 3000
    sink = start_sink(keep_messages=True)
    relays = [relay_block("sink", sink.port, max_connections=4, rate="300/s")]
    name = load_campaign_into(tmp_path, postgres_url, relays, count, 'lease = "15s"\n')
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [start_worker(postgres_url, name, log) for log in logs]
    wait_for(lambda: sink.stats.messages >= 300, 60, "300 messages at the sink")
    status = mailblast("status", name, "--store", postgres_url)

    mailblast("pause", name, "--store", postgres_url)
    time.sleep(5)
    after_pause = sink.stats.messages
    time.sleep(2)
    still = sink.stats.messages
    mailblast("resume", name, "--store", postgres_url)
    finish(workers, logs, timeout=120)

    assert status.count("worker ") == 3
    assert "msg/s" in status
    assert after_pause < count
    assert still == after_pause
    assert all("paused" in log.read_text() for log in logs)
    by_recipient = received_counts([sink])
    assert len(by_recipient) == count
    assert max(by_recipient.values()) == 1


@pytest.mark.slow
def test_cancel_reaches_every_worker(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    count = 2000
    sink = start_sink()
    relays = [relay_block("sink", sink.port, max_connections=2, rate="100/s")]
    name = load_campaign_into(tmp_path, postgres_url, relays, count, 'lease = "15s"\n')
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [start_worker(postgres_url, name, log) for log in logs]
    wait_for(lambda: sink.stats.messages >= 100, 60, "100 messages at the sink")

    mailblast("cancel", name, "--store", postgres_url, "--yes")
    cancelled_at = time.monotonic()
    finish(workers, logs, timeout=30)

    assert time.monotonic() - cancelled_at < 10
    with open_store(postgres_url) as store:
        row = store.get_campaign(name)
        assert row is not None
        counts = store.counts(row.id)
    assert row.status == "cancelled"
    assert counts["cancelled"] > 0
    assert counts["sent"] == sink.stats.messages
    assert counts["sent"] + counts["cancelled"] == count
