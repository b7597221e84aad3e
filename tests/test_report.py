"""`mailblast report`: each figure against the store and the delivery log, escaping, the CLI."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.config import load_campaign
from mailblast.engine import Engine
from mailblast.report import MASK, build_report, choose_bucket, mask_secrets
from mailblast.report_html import render_html
from mailblast.sink import ThreadedSink
from mailblast.store.base import LoadRow, LogRecord, Outcome
from mailblast.store.sqlite import SQLiteStore
from serving import free_port

SENDING = (
    'retry_initial = "200ms"\nretry_max = "400ms"\nmax_attempts = 3\n'
    "error_budget = 0.5\nerror_window = 200\n"
)
CHART_IDS = ("chart-throughput", "chart-reply-classes", "chart-status-codes")


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailblast.cli.main", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def scripted(prefix: str, count: int, domain: str = "example.org") -> list[list[str]]:
    return [[f"{prefix}{i}@{domain}", "S", "R", "Gala", str(i)] for i in range(count)]


def export_log(store: str, name: str = "spring-gala") -> list[dict[str, Any]]:
    result = run_cli("log", "export", name, "--store", store, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def status_json(store: str, name: str = "spring-gala") -> dict[str, Any]:
    result = run_cli("status", name, "--store", store, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def reason_counts(records: list[dict[str, Any]], kind: str) -> Counter[tuple[Any, ...]]:
    return Counter(
        (r["command"], r["code"], r["status"])
        for r in records
        if r["type"] == kind and r["command"] is not None
    )


@pytest.fixture(scope="module")
def small_campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A sent campaign over two relays with bounces, deferrals that expire, and failures."""
    directory = tmp_path_factory.mktemp("report")
    sinks = [ThreadedSink("127.0.0.1", 0) for _ in range(2)]
    for sink in sinks:
        sink.start()
    try:
        rows = person_rows(300) + person_rows(40, "example.net")
        rows += scripted("bounce-", 4) + scripted("tempfail-", 5) + scripted("full-", 2)
        rows += scripted("reject-data-", 3)
        write_list(directory / "attendees.csv", rows)
        relays = [relay_block("alpha", sinks[0].port), relay_block("beta", sinks[1].port)]
        campaign = load_campaign(write_campaign(directory, relays, sending=SENDING))
        blast.send(campaign)
    finally:
        for sink in sinks:
            sink.stop()
    yield directory / "mailblast.db"


@pytest.fixture(scope="module")
def figures(small_campaign: Path) -> dict[str, Any]:
    with blast.opened(str(small_campaign)) as store:
        return build_report(store, "spring-gala")


def test_report_totals_match_status(small_campaign: Path, figures: dict[str, Any]) -> None:
    status = status_json(str(small_campaign))
    assert figures["totals"] == status["counts"]
    assert figures["total"] == status["total"] == 354
    assert figures["totals"]["bounced"] == 4
    assert figures["totals"]["failed"] == 3
    assert figures["totals"]["expired"] == 7
    assert figures["relays"].keys() == status["relays"].keys()


def test_report_reasons_match_log(small_campaign: Path, figures: dict[str, Any]) -> None:
    records = export_log(str(small_campaign))
    for kind in ("deferred", "bounced", "failed"):
        expected = reason_counts(records, kind)
        found = {
            (r["command"], r["code"], r["status"]): r["count"] for r in figures["reasons"][kind]
        }
        assert found == dict(expected), kind
    bounced = figures["reasons"]["bounced"]
    assert [(r["command"], r["code"], r["status"], r["count"]) for r in bounced] == [
        ("rcpt", 550, "5.1.1", 4)
    ]
    assert bounced[0]["example"] == "5.1.1 User unknown"
    assert bounced[0]["relay"] in ("alpha", "beta")
    deferred = {(r["code"], r["status"]): r["count"] for r in figures["reasons"]["deferred"]}
    assert deferred == {(451, "4.7.1"): 10, (452, "4.2.2"): 4}  # the third attempt expires
    assert figures["reasons"]["failed"][0]["example"] == "5.6.0 Message rejected"


def test_report_timing_and_throughput(small_campaign: Path, figures: dict[str, Any]) -> None:
    records = [r for r in export_log(str(small_campaign)) if r["command"] is not None]
    timing = figures["timing"]
    assert timing["attempts"] == len(records)
    assert timing["sent"] == figures["totals"]["sent"]
    assert timing["first_attempt_at"] == min(r["time"] for r in records)
    assert timing["last_attempt_at"] == max(r["time"] for r in records)
    assert timing["duration"] == pytest.approx(
        timing["last_attempt_at"] - timing["first_attempt_at"]
    )
    assert timing["mean_rate"] == pytest.approx(timing["sent"] / timing["duration"])
    assert timing["peak_rate"] >= timing["mean_rate"] * (1 - 1e-9)
    if len(figures["bucket_starts"]) > 1:
        assert timing["peak_rate"] == max(figures["throughput"]["total"])
    bucket = figures["bucket_seconds"]
    sent_by_relay = Counter(r["relay"] for r in records if r["type"] == "sent")
    for relay, series in figures["throughput"]["relays"].items():
        assert round(sum(series) * bucket) == sent_by_relay[relay], relay
    assert round(sum(figures["throughput"]["total"]) * bucket) == timing["sent"]
    assert len(figures["bucket_starts"]) == len(figures["throughput"]["total"])


def test_report_reply_classes(figures: dict[str, Any]) -> None:
    classes = figures["reply_classes"]["totals"]
    assert classes["success"] == figures["totals"]["sent"]
    assert classes["recipient"] == 4
    assert classes["message"] == 3
    assert classes["temporary"] == (5 + 2) * 3  # three attempts each before they expire
    assert sum(classes.values()) == figures["timing"]["attempts"]
    for name, series in figures["reply_classes"]["series"].items():
        assert sum(series) == classes[name], name
    statuses = figures["status_codes"]["totals"]
    assert statuses["2.0.0"] == figures["totals"]["sent"]
    assert statuses["5.1.1"] == 4
    assert statuses["4.2.2"] == 6
    assert statuses["4.7.1"] == 15


def test_report_domains(small_campaign: Path, figures: dict[str, Any]) -> None:
    domains = {entry["domain"]: entry for entry in figures["domains"]}
    assert [entry["domain"] for entry in figures["domains"]] == [
        "example.com",
        "example.net",
        "example.org",
    ]
    assert domains["example.com"]["total"] == 300
    assert domains["example.com"]["states"]["sent"] == 300
    assert domains["example.org"]["states"]["bounced"] == 4
    assert domains["example.org"]["states"]["failed"] == 3
    assert domains["example.org"]["states"]["expired"] == 7
    assert domains["example.org"]["states"]["sent"] == 0
    assert sum(entry["total"] for entry in figures["domains"]) == figures["total"]


def test_report_settings_masked(figures: dict[str, Any]) -> None:
    settings = figures["settings"]
    assert settings["name"] == "spring-gala"
    assert settings["relays"][0]["name"] == "alpha"
    assert settings["relays"][0]["password_env"] is None  # unset stays visible as unset
    assert settings["templates"]["subject"].startswith("{{ first_name }}")


def test_mask_secrets_nested() -> None:
    settings = {
        "relays": [{"name": "a", "password_env": "SMTP_PASSWORD", "username": "blast"}],
        "dkim": {"private_key_file": "/etc/dkim.pem", "selector": "s1"},
        "unsubscribe": {"secret_env": "UNSUB", "token_days": 30},
        "api_token": None,
        "subject": "Hello",
    }

    masked = mask_secrets(settings)

    assert masked["relays"][0] == {"name": "a", "password_env": MASK, "username": "blast"}
    assert masked["dkim"] == {"private_key_file": MASK, "selector": "s1"}
    assert masked["unsubscribe"] == {"secret_env": MASK, "token_days": MASK}
    assert masked["api_token"] is None  # nothing to hide; None shows it is not set
    assert masked["subject"] == "Hello"
    assert settings["relays"][0]["password_env"] == "SMTP_PASSWORD"


@pytest.mark.parametrize(
    ("duration", "bucket"), [(0, 1), (119, 1), (121, 2), (3600, 30), (86400, 900), (1e7, 86400)]
)
def test_bucket_width(duration: float, bucket: int) -> None:
    assert choose_bucket(duration) == bucket


MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def hostile_store(path: Path) -> SQLiteStore:
    """A store whose settings, relay name, domain and reply text all contain markup."""
    store = SQLiteStore(path)
    row = store.upsert_campaign("hostile", {"subject": MARKUP, "password": "hunter2"}, 1000.0)
    address = f"guest@{MARKUP}.example.com"
    store.load_chunk(row.id, [LoadRow(1, address, address, False, "{}")], [], 1, 1)
    store.finish_load(row.id, 1000.0)
    [message] = store.claim(row.id, "test", 1001.0, 1100.0, 10)
    record = LogRecord(
        type="bounced",
        time=1002.0,
        message=message.id,
        recipient=address,
        relay=f"relay{MARKUP}",
        attempt=1,
        command="rcpt",
        code=550,
        status="5.1.1",
        text=f"5.1.1 {MARKUP} unknown",
        duration=0.01,
    )
    store.commit_group(row.id, [], [Outcome(message.id, "bounced", 1, 1002.0, 1002.0, record)])
    return store


def test_report_html_escapes_markup(tmp_path: Path) -> None:
    store = hostile_store(tmp_path / "hostile.db")
    try:
        figures = build_report(store, "hostile")
    finally:
        store.close()

    page = render_html(figures)

    assert "<script" not in page
    assert "<img" not in page
    assert "hunter2" not in page
    assert "5.1.1 &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert 'data-domain="&lt;script&gt;' in page
    assert figures["domains"][0]["domain"].startswith("<script>")


def test_report_command_writes_html_and_json(small_campaign: Path, tmp_path: Path) -> None:
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"

    result = run_cli(
        "report", "spring-gala", "--store", str(small_campaign), "--html", str(html_path),
        "--json", str(json_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {html_path}\nwrote {json_path}\n"
    page = html_path.read_text(encoding="utf-8")
    figures = json.loads(json_path.read_text(encoding="utf-8"))
    assert figures["totals"] == status_json(str(small_campaign))["counts"]
    for chart in CHART_IDS:
        match = re.search(rf'<svg id="{chart}"[^>]*>(.*?)</svg>', page, re.S)
        assert match is not None, chart
        assert "<path" in match.group(1), chart
    # Self-contained: no script, no fetched resource, no external font or style sheet.
    assert "<script" not in page
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) is None
    assert "@import" not in page
    assert "url(http" not in page
    assert "<link" not in page
    assert f'<td class="n">{figures["totals"]["sent"]}</td>' in page


def test_report_command_unknown_campaign(small_campaign: Path, tmp_path: Path) -> None:
    result = run_cli(
        "report", "autumn", "--store", str(small_campaign), "--html", str(tmp_path / "r.html")
    )

    assert result.returncode == 2
    assert "campaign 'autumn' not found in store" in result.stderr
    assert "spring-gala" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_command_unwritable_output(small_campaign: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "r.html"

    result = run_cli("report", "spring-gala", "--store", str(small_campaign), "--html", str(target))

    assert result.returncode == 2
    assert f"cannot write {target}: No such file or directory" in result.stderr


# The end-to-end scenario: 20,000 messages over four relays, one of which stops mid-run.

RELAY_NAMES = ("north", "south", "east", "west")
OUTAGE = "west"
DOMAIN_COUNT = 25


def scenario_rows() -> list[list[str]]:
    """19,600 ordinary guests over 25 domains of uneven size, and 400 scripted failures.

    The rows are shuffled so that bounces and failures never pass the error budget.
    """
    rows = []
    for i in range(19_600):
        domain = f"d{i % DOMAIN_COUNT if i % 3 else i % 5:02d}.example.com"
        rows.append([f"guest{i}@{domain}", "F", "L", "Gala", str(i)])
    rows += scripted("bounce-", 150)
    rows += scripted("tempfail-", 100)
    rows += scripted("full-", 50)
    rows += scripted("reject-data-", 100)
    random.Random(7).shuffle(rows)
    return rows


@contextlib.contextmanager
def sink_processes(
    names: tuple[str, ...], log: Path
) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    """Run one `mailblast sink` process per relay name; yield each one's process and port."""
    ports = {name: free_port() for name in names}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with open(log, "wb") as output:
        try:
            for name in names:
                command = [sys.executable, "-m", "mailblast.cli.main", "sink"]
                command += ["--port", str(ports[name]), "--interval", "600"]
                processes[name] = subprocess.Popen(command, stdout=output, stderr=output)
            for port in ports.values():
                wait_for_listener(port)
            yield {name: (processes[name], ports[name]) for name in names}
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
                process.wait(timeout=30)


def wait_for_listener(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"no sink listening on port {port} after 20 s")


def stop_after_sends(
    process: subprocess.Popen[bytes], relay_name: str, count: int, engine: Engine
) -> None:
    """Stop a relay's sink process once the engine has sent ``count`` messages through it."""
    [relay] = [r for r in engine.pool.relays if r.name == relay_name]
    deadline = time.monotonic() + 60
    while relay.sent < count and time.monotonic() < deadline:
        time.sleep(0.01)
    process.terminate()


@pytest.mark.slow
def test_report_of_blast_with_outage(tmp_path: Path) -> None:
    # The sinks run in their own processes so that they do not share this process's GIL.
    with sink_processes(RELAY_NAMES, tmp_path / "sinks.log") as sinks:
        rows = scenario_rows()
        write_list(tmp_path / "attendees.csv", rows)
        relays = [
            relay_block(name, port, max_connections=4, connect_timeout="1s")
            for name, (_, port) in sinks.items()
        ]
        campaign = load_campaign(write_campaign(tmp_path, relays, sending=SENDING))
        watchers: list[threading.Thread] = []

        def start_outage(engine: Engine) -> None:
            arguments = (sinks[OUTAGE][0], OUTAGE, 300, engine)
            watchers.append(threading.Thread(target=stop_after_sends, args=arguments))
            watchers[-1].start()

        started = time.monotonic()
        blast.send(campaign, on_start=start_outage)
        for watcher in watchers:
            watcher.join()
        elapsed = time.monotonic() - started
    store = str(tmp_path / "mailblast.db")
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    result = run_cli(
        "report", "spring-gala", "--store", store, "--html", str(html_path),
        "--json", str(json_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(json_path.read_text(encoding="utf-8"))
    status = status_json(store)
    records = export_log(store)
    attempts = [r for r in records if r["command"] is not None]

    # Totals equal `mailblast status`; stopping a relay may leave a few messages unknown.
    assert figures["totals"] == status["counts"]
    assert figures["total"] == 20_000
    assert figures["totals"]["bounced"] == 150
    assert figures["totals"]["failed"] == 100
    assert figures["totals"]["expired"] == 150
    assert figures["totals"]["unknown"] <= 4
    assert figures["totals"]["sent"] == 19_600 - figures["totals"]["unknown"]

    # Each reason table equals the delivery log grouped the same way.
    for kind in ("deferred", "bounced", "failed"):
        found = {
            (r["command"], r["code"], r["status"]): r["count"] for r in figures["reasons"][kind]
        }
        expected = reason_counts(records, kind)
        assert found == dict(expected.most_common(len(found))), kind
    assert figures["reasons"]["bounced"][0]["count"] == 150
    assert figures["reasons"]["failed"][0]["status"] == "5.6.0"
    deferred = {(r["command"], r["code"]): r for r in figures["reasons"]["deferred"]}
    assert deferred[("rcpt", 451)]["count"] == 200  # two deferrals before the third expires
    assert deferred[("rcpt", 452)]["count"] == 100

    # The outage: the stopped relay's connection failures are deferrals, its line falls to 0.
    outage_records = [
        r
        for r in attempts
        if r["relay"] == OUTAGE and r["code"] is None and r["type"] == "deferred"
    ]
    assert outage_records, "the stopped relay never failed a connection"
    assert figures["reply_classes"]["totals"]["connection"] >= len(outage_records)
    assert figures["relays"][OUTAGE]["deferred"] >= len(outage_records)
    series = figures["throughput"]["relays"][OUTAGE]
    sent_before_outage = round(sum(series) * figures["bucket_seconds"])
    assert sent_before_outage == figures["relays"][OUTAGE]["sent"]
    assert sent_before_outage >= 300
    last_active = max(index for index, rate in enumerate(series) if rate)
    assert last_active < len(series) - 3  # the others kept sending for several more buckets
    assert figures["relays"] == status["relays"]

    # Reply classes and timing equal the delivery log.
    assert sum(figures["reply_classes"]["totals"].values()) == len(attempts)
    assert figures["reply_classes"]["totals"]["recipient"] == 150
    assert figures["reply_classes"]["totals"]["message"] == 100
    assert figures["timing"]["attempts"] == len(attempts)
    assert figures["timing"]["sent"] == sum(1 for r in attempts if r["type"] == "sent")
    assert figures["timing"]["duration"] <= elapsed

    # Domains: the top 20 of 26, each with the states its recipients' final records show.
    final: dict[str, str] = {}
    for record in attempts:
        if record["type"] in ("sent", "bounced", "failed", "expired", "unknown"):
            final[record["recipient"]] = record["type"]
    by_domain: dict[str, Counter[str]] = {}
    for recipient, state in final.items():
        by_domain.setdefault(recipient.rpartition("@")[2], Counter())[state] += 1
    assert len(figures["domains"]) == 20
    for entry in figures["domains"]:
        expected_states = by_domain[entry["domain"]]
        assert {s: n for s, n in entry["states"].items() if n} == dict(expected_states)
    sizes = [entry["total"] for entry in figures["domains"]]
    assert sizes == sorted(sizes, reverse=True)
    smallest_shown = sizes[-1]
    hidden = set(by_domain) - {entry["domain"] for entry in figures["domains"]}
    assert all(sum(by_domain[d].values()) <= smallest_shown for d in hidden)

    page = html_path.read_text(encoding="utf-8")
    for chart in CHART_IDS:
        assert f'<svg id="{chart}"' in page
    assert f'<tr data-relay="{OUTAGE}">' in page
    assert "5.1.1 User unknown" in page


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve a folder over HTTP on 127.0.0.1, the only host the test browser may reach."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_report_renders_in_browser(small_campaign: Path, tmp_path: Path, browser: Any) -> None:
    html_path = tmp_path / "report.html"
    result = run_cli(
        "report", "spring-gala", "--store", str(small_campaign), "--html", str(html_path)
    )
    assert result.returncode == 0, result.stderr
    status = status_json(str(small_campaign))

    with static_server(tmp_path) as base:
        browser.page.goto(f"{base}/report.html")
        for chart in CHART_IDS:
            box = browser.page.locator(f"svg#{chart}").bounding_box()
            assert box is not None, chart
            assert box["width"] > 100, chart
            assert box["height"] > 50, chart
            assert browser.page.locator(f"svg#{chart} path").count() > 0, chart
        for state, count in status["counts"].items():
            cell = browser.page.locator(f'tr[data-state="{state}"] td.n')
            assert cell.inner_text() == str(count), state
        total = browser.page.locator('tr[data-state="total"] td.n').inner_text()
        assert total == str(status["total"])
        browser.screenshot("report")
