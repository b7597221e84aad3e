"""Prometheus metrics from `mailblast send --metrics` and from `mailblast serve` at /metrics."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.config import load_campaign
from mailblast.engine import Engine
from mailblast.errors import MailblastError
from mailblast.metrics import SendMetrics, parse_address
from mailblast.sink import ThreadedSink
from serving import free_port, serving

FINAL_STATES = ("sent", "bounced", "failed")


def scripted_rows(count: int) -> list[list[str]]:
    """Ordinary guests plus a few bounces, greylisted addresses and DATA rejections."""
    rows = person_rows(count)
    for prefix in ("bounce-", "tempfail2-", "reject-data-"):
        rows += [[f"{prefix}{i}@example.org", "S", "R", "Gala", str(i)] for i in range(3)]
    return rows


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse an exposition with prometheus-client's parser: sample name -> (labels, value)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total_by(
    parsed: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> Counter[str]:
    totals: Counter[str] = Counter()
    for labels, value in parsed.get(name, []):
        totals[labels[label]] += int(value)
    return totals


def status_json(store: str) -> dict[str, object]:
    command = [sys.executable, "-m", "mailblast.cli.main", "status", "spring-gala"]
    result = subprocess.run(
        [*command, "--store", store, "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def attempt_records(store: str) -> list[dict[str, object]]:
    with blast.opened(store) as opened:
        row = blast.require_campaign(opened, "spring-gala")
        return [r for r in opened.iter_log(row.id) if r["command"] is not None]


def two_relay_campaign(tmp_path: Path, start_sink: Callable[..., ThreadedSink]) -> Path:
    first, second = start_sink(), start_sink()
    relays = [relay_block("alpha", first.port), relay_block("beta", second.port)]
    write_list(tmp_path / "attendees.csv", scripted_rows(300))
    return write_campaign(tmp_path, relays)


def test_send_metrics_agree_with_store(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    campaign = load_campaign(two_relay_campaign(tmp_path, start_sink))
    metrics = SendMetrics(campaign.name)
    port = free_port()
    metrics.serve("127.0.0.1", port)
    try:
        summary, _, _ = blast.send(campaign, on_start=metrics.attach)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        metrics.stop()

    parsed = samples(text)
    states = total_by(parsed, "mailblast_messages_total", "state")
    counts = status_json(campaign.store)["counts"]
    assert isinstance(counts, dict)
    for state in FINAL_STATES:
        assert states[state] == counts[state], state
    assert counts["bounced"] == 3
    assert counts["failed"] == 3
    records = attempt_records(campaign.store)
    assert states == Counter(str(r["type"]) for r in records)
    assert sum(total_by(parsed, "mailblast_attempts_total", "reply_class").values()) == len(records)
    relays = total_by(parsed, "mailblast_messages_total", "relay")
    assert set(relays) == {"alpha", "beta"}
    classes = total_by(parsed, "mailblast_attempts_total", "reply_class")
    assert classes["recipient"] == 3
    assert classes["message"] == 3
    assert classes["temporary"] >= 6
    assert parsed["mailblast_send_duration_seconds_count"][0][1] == len(records)
    assert {labels["relay"]: value for labels, value in parsed["mailblast_relay_up"]} == {
        "alpha": 1.0,
        "beta": 1.0,
    }
    assert summary.status == "done"


def test_serve_metrics_agree_with_store(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    campaign = load_campaign(two_relay_campaign(tmp_path, start_sink))
    blast.send(campaign)

    with serving(campaign.store) as base:
        response = httpx.get(f"{base}/metrics", timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    parsed = samples(response.text)
    status = status_json(campaign.store)
    counts = status["counts"]
    assert isinstance(counts, dict)
    states = total_by(parsed, "mailblast_messages_total", "state")
    for state in FINAL_STATES:
        assert states[state] == counts[state], state
    records = attempt_records(campaign.store)
    assert states == Counter(str(r["type"]) for r in records)
    classes = total_by(parsed, "mailblast_attempts_total", "reply_class")
    assert sum(classes.values()) == len(records)
    assert classes["recipient"] == 3
    current = {labels["state"]: value for labels, value in parsed["mailblast_campaign_messages"]}
    assert current["sent"] == counts["sent"]
    assert parsed["mailblast_queue_depth"] == [({"campaign": "spring-gala"}, 0.0)]
    assert parsed["mailblast_in_flight"] == [({"campaign": "spring-gala"}, 0.0)]
    histogram = parsed["mailblast_send_duration_seconds_bucket"]
    infinite = [value for labels, value in histogram if labels["le"] == "+Inf"]
    assert infinite == [len(records)]
    assert "mailblast_relay_up" not in parsed


def test_send_option_serves_metrics_while_sending(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(1000))
    relays = [relay_block("only", sink.port, max_connections=2, rate="250/s")]
    campaign = write_campaign(tmp_path, relays)
    port = free_port()
    command = [sys.executable, "-m", "mailblast.cli.main", "send", str(campaign)]
    sender = subprocess.Popen(
        [*command, "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        parsed = wait_for_sent(f"http://127.0.0.1:{port}/metrics", sender)
        assert sender.wait(timeout=60) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()

    assert parsed["mailblast_relay_up"] == [({"relay": "only"}, 1.0)]
    current = {labels["state"]: value for labels, value in parsed["mailblast_campaign_messages"]}
    assert sum(current.values()) == 1000
    assert parsed["mailblast_queue_depth"][0][1] == current["queued"] + current["deferred"]
    assert parsed["mailblast_in_flight"][0][1] > 0
    sent = total_by(parsed, "mailblast_messages_total", "state")["sent"]
    final = status_json(str(tmp_path / "mailblast.db"))["counts"]
    assert isinstance(final, dict)
    assert 0 < sent < final["sent"] == 1000


def wait_for_sent(
    url: str, sender: subprocess.Popen[bytes]
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Scrape until messages are being sent and the per-state gauges show it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert sender.poll() is None, "mailblast send exited before it was scraped"
        try:
            parsed = samples(httpx.get(url, timeout=2).text)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        sent = total_by(parsed, "mailblast_messages_total", "state")["sent"]
        current = dict(
            (labels["state"], value)
            for labels, value in parsed.get("mailblast_campaign_messages", [])
        )
        if sent > 50 and current.get("sent"):
            return parsed
        time.sleep(0.05)
    raise AssertionError("no sent message appeared in the metrics within 30 s")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9101", ("127.0.0.1", 9101)), ("[::1]:9101", ("::1", 9101))],
)
def test_metrics_address_parsed(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["9101", "127.0.0.1", "127.0.0.1:http", ":9101", "host:70000"])
def test_metrics_address_rejected(value: str) -> None:
    with pytest.raises(MailblastError, match="is not HOST:PORT"):
        parse_address(value)


def test_engine_without_metrics_has_no_observer(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(5))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))
    observers: list[object] = []

    def look(engine: Engine) -> None:
        observers.append(engine.recorder.observer)

    summary, _, _ = blast.send(campaign, on_start=look)

    assert observers == [None]
    assert summary.counts["sent"] == 5


def test_send_metrics_option_errors(tmp_path: Path) -> None:
    write_list(tmp_path / "attendees.csv", person_rows(3))
    campaign = write_campaign(tmp_path, [relay_block("only", free_port())])
    command = [sys.executable, "-m", "mailblast.cli.main", "send", str(campaign), "--metrics"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        results = [
            subprocess.run([*command, value], capture_output=True, text=True, timeout=60)
            for value in ("9101", f"127.0.0.1:{busy}")
        ]

    assert results[0].returncode == 2
    assert "--metrics '9101' is not HOST:PORT" in results[0].stderr
    assert results[1].returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{busy}: Address already in use" in results[1].stderr
    assert not (tmp_path / "mailblast.db").exists()
