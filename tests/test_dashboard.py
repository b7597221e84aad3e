"""The dashboard's JSON feed and control endpoints over HTTP, against a real `mailblast serve`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from dashboard_campaigns import (
    CONTROL_TOKEN,
    MARKUP_REPLY,
    build_sent_store,
    campaign_status,
    copy_store,
    store_status,
)
from mailblast.store import open_store
from mailblast.store.base import LoadRow, LogRecord, Outcome
from serving import serving

TOKEN = {"MAILBLAST_CONTROL_TOKEN": CONTROL_TOKEN}
AUTHORIZED = {"X-Mailblast-Token": CONTROL_TOKEN}


@pytest.fixture(scope="module")
def sent_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sent_store(tmp_path_factory.mktemp("sent"))


@pytest.fixture
def store(sent_store: Path, tmp_path: Path) -> Path:
    return copy_store(sent_store, tmp_path)


def test_feed_matches_status(store: Path) -> None:
    status = store_status(store)

    with serving(store, TOKEN) as base:
        figures = httpx.get(f"{base}/api/dashboard").json()

    assert figures["control"] is True
    [campaign] = figures["campaigns"]
    progress = campaign["progress"]
    assert campaign["name"] == "spring-gala"
    assert campaign["status"] == status["status"]
    assert progress["counts"] == status["counts"]
    assert progress["total"] == status["total"]
    assert progress["sent"] == 51
    buckets = campaign["deferred"]["buckets"]
    assert sum(bucket["count"] for bucket in buckets) == progress["counts"]["deferred"]
    assert len(campaign["deferred"]["next"]) == 5


def test_feed_relays_match_status(store: Path) -> None:
    relays = store_status(store)["relays"]
    assert isinstance(relays, dict)

    with serving(store, TOKEN) as base:
        [campaign] = httpx.get(f"{base}/api/dashboard").json()["campaigns"]

    shown = {relay["name"]: relay for relay in campaign["relays"]}
    assert set(shown) == {"primary", "backup"}
    for name, totals in relays.items():
        assert shown[name]["counts"]["sent"] == totals.get("sent", 0)
        assert shown[name]["counts"]["bounced"] == totals.get("bounced", 0)
        assert shown[name]["state"] == "up"


def test_feed_lists_last_errors(store: Path) -> None:
    with serving(store, TOKEN) as base:
        [campaign] = httpx.get(f"{base}/api/dashboard").json()["campaigns"]

    problems = campaign["problems"]
    assert problems[0]["text"] == MARKUP_REPLY
    assert {problem["type"] for problem in problems} == {"deferred", "bounced"}
    domains = {problem["domain"] for problem in problems}
    assert domains <= {"example.org", "example.net", "example.com"}


def test_page_is_self_contained(store: Path) -> None:
    with serving(store, TOKEN) as base:
        response = httpx.get(f"{base}/")

    assert response.status_code == 200
    assert "http://" not in response.text
    assert "https://" not in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy


def test_control_needs_token(store: Path) -> None:
    url = "/api/campaigns/spring-gala/pause"

    with serving(store, TOKEN) as base:
        missing = httpx.post(f"{base}{url}")
        wrong = httpx.post(f"{base}{url}", headers={"X-Mailblast-Token": "guess"})
        unknown = httpx.post(f"{base}/api/campaigns/autumn-ball/pause", headers=AUTHORIZED)
        bad_action = httpx.post(f"{base}/api/campaigns/spring-gala/restart", headers=AUTHORIZED)
        by_get = httpx.get(f"{base}{url}", headers=AUTHORIZED)

    assert missing.status_code == 403
    assert "missing control token" in missing.json()["error"]
    assert wrong.status_code == 403
    assert unknown.status_code == 404
    assert "autumn-ball" in unknown.json()["error"]
    assert bad_action.status_code == 404
    assert by_get.status_code == 405
    assert campaign_status(store) == "active"


def test_control_pause_resume_cancel(store: Path) -> None:
    def post(base: str, action: str) -> httpx.Response:
        return httpx.post(f"{base}/api/campaigns/spring-gala/{action}", headers=AUTHORIZED)

    with serving(store, TOKEN) as base:
        paused = post(base, "pause")
        status_paused = campaign_status(store)
        resumed = post(base, "resume")
        status_resumed = campaign_status(store)
        cancelled = post(base, "cancel")
        resumed_again = post(base, "resume")

    assert paused.json() == {"campaign": "spring-gala", "action": "pause", "status": "paused"}
    assert status_paused == "paused"
    assert resumed.status_code == 200
    assert status_resumed == "active"
    assert cancelled.json()["status"] == "cancelled"
    assert resumed_again.status_code == 409
    final = store_status(store)
    counts = final["counts"]
    assert isinstance(counts, dict)
    assert final["status"] == "cancelled"
    assert counts["deferred"] == 0
    assert counts["cancelled"] == 6


def test_read_only_without_token(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILBLAST_CONTROL_TOKEN", raising=False)

    with serving(store) as base:
        figures = httpx.get(f"{base}/api/dashboard").json()
        attempt = httpx.post(f"{base}/api/campaigns/spring-gala/pause", headers=AUTHORIZED)

    assert figures["control"] is False
    assert attempt.status_code == 403
    assert "read-only" in attempt.json()["error"]
    assert campaign_status(store) == "active"


def test_control_token_from_file(store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "control-token"
    token_file.write_text(CONTROL_TOKEN + "\n", encoding="utf-8")

    with serving(store, {}, "--control-token-file", str(token_file)) as base:
        response = httpx.post(f"{base}/api/campaigns/spring-gala/pause", headers=AUTHORIZED)

    assert response.status_code == 200
    assert campaign_status(store) == "paused"


def test_feed_from_postgres_store(postgres_url: str) -> None:
    with open_store(postgres_url) as opened:
        campaign = opened.upsert_campaign("autumn", {"relays": [{"name": "primary"}]}, 1.0).id
        rows = [
            LoadRow(i + 2, f"guest{i}@example.org", f"guest{i}@example.org", False, "{}")
            for i in range(3)
        ]
        opened.load_chunk(campaign, rows, [], 4, 3)
        [message] = opened.claim(campaign, "run", time.time(), time.time() + 60, 1)
        now = time.time()
        record = LogRecord(
            "sent",
            now,
            message.id,
            recipient=message.address,
            relay="primary",
            command="data",
            code=250,
        )
        opened.commit_group(campaign, [], [Outcome(message.id, "sent", 1, now, now, record)])

    with serving(postgres_url, TOKEN) as base:
        [feed] = httpx.get(f"{base}/api/dashboard").json()["campaigns"]

    assert feed["name"] == "autumn"
    assert feed["progress"]["counts"]["sent"] == 1
    assert feed["progress"]["counts"]["queued"] == 2
    [relay] = feed["relays"]
    assert (relay["name"], relay["state"], relay["counts"]["sent"]) == ("primary", "up", 1)
