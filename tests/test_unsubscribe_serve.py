"""One-click unsubscribe over real HTTP against `mailblast serve`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailblast.cli.main import main
from mailblast.compose import message_id_for
from mailblast.store.base import LoadRow
from mailblast.store.sqlite import SQLiteStore
from mailblast.unsubscribe import make_token
from serving import serving

SECRET = "0123456789abcdef0123456789abcdef"
ENV = {"MAILBLAST_UNSUBSCRIBE_SECRET": SECRET}
CAMPAIGN = "spring-gala"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


class Server:
    """A running `mailblast serve` and the store it serves."""

    def __init__(self, base: str, store_path: Path) -> None:
        self.base = base
        self.store_path = store_path

    def url(self, address: str, campaign: str = CAMPAIGN) -> str:
        token = make_token(SECRET.encode(), campaign, address)
        return f"{self.base}/unsubscribe?token={token}"

    def state(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Return the suppressions and the unsubscribed delivery records."""
        store = SQLiteStore(self.store_path)
        try:
            entries = [
                (e.address, e.reason, e.campaign_id, e.origin) for e in store.list_suppressions()
            ]
            campaign = store.get_campaign(CAMPAIGN)
            assert campaign is not None
            records = [
                (r["recipient"], r["line"], r["text"], r["message_id"])
                for r in store.iter_log(campaign.id)
                if r["type"] == "unsubscribed"
            ]
        finally:
            store.close()
        return entries, records


def make_store(path: Path) -> None:
    store = SQLiteStore(path)
    settings = {"name": CAMPAIGN, "from_address": "events@example.com"}
    campaign = store.upsert_campaign(CAMPAIGN, settings, 1.0).id
    rows = [
        LoadRow(i + 2, f"guest{i}@example.com", f"guest{i}@example.com", False, "{}")
        for i in range(9)
    ]
    store.load_chunk(campaign, rows, [], 10, 9)
    store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store_path = tmp_path_factory.mktemp("serve") / "mailblast.db"
    make_store(store_path)
    with serving(store_path, ENV) as base:
        yield Server(base, store_path)


def suppressed(server: Server, address: str) -> list[tuple[Any, ...]]:
    return [entry for entry in server.state()[0] if entry[0] == address]


def unsubscribed(server: Server, address: str) -> list[tuple[Any, ...]]:
    return [record for record in server.state()[1] if record[0] == address]


def test_one_click_post(server: Server) -> None:
    response = httpx.post(server.url("guest0@example.com"), data=ONE_CLICK)
    assert response.status_code == 200
    assert response.content == b""
    assert suppressed(server, "guest0@example.com") == [
        ("guest0@example.com", "unsubscribed", 0, CAMPAIGN)
    ]
    [record] = unsubscribed(server, "guest0@example.com")
    assert record[1] == 2
    assert "one-click POST" in record[2]
    assert record[3] == message_id_for(CAMPAIGN, "guest0@example.com", "example.com")


def test_one_click_multipart(server: Server) -> None:
    boundary = "mailblast-test-boundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        f"One-Click\r\n--{boundary}--\r\n"
    )
    response = httpx.post(
        server.url("guest1@example.com"),
        content=body.encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200
    assert len(suppressed(server, "guest1@example.com")) == 1


def test_get_then_button(server: Server) -> None:
    page = httpx.get(server.url("guest2@example.com"))
    assert page.status_code == 200
    assert "guest2@example.com" in page.text
    assert "<link" not in page.text
    assert "src=" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert suppressed(server, "guest2@example.com") == []

    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)"', page.text))
    response = httpx.post(f"{server.base}/unsubscribe{action.group(1)}", data=fields)
    assert response.status_code == 200
    assert "will get no more mail" in response.text
    assert len(suppressed(server, "guest2@example.com")) == 1
    [record] = unsubscribed(server, "guest2@example.com")
    assert "confirmation page" in record[2]


def test_tampered_token(server: Server) -> None:
    url = server.url("guest3@example.com")
    flipped = url[:-1] + ("A" if url[-1] != "A" else "B")
    other = make_token(b"another secret of 32 bytes......", CAMPAIGN, "guest3@example.com")
    before = server.state()
    for bad in (flipped, f"{server.base}/unsubscribe?token={other}", f"{server.base}/unsubscribe"):
        assert httpx.post(bad, data=ONE_CLICK).status_code == 400
        page = httpx.get(bad)
        assert page.status_code == 400
        assert "invalid" in page.text
    assert server.state() == before


def test_post_without_one_click_body(server: Server) -> None:
    url = server.url("guest4@example.com")
    before = server.state()
    assert httpx.post(url, data={"List-Unsubscribe": "Other"}).status_code == 400
    response = httpx.post(url, content=b"List-Unsubscribe=One-Click")  # no Content-Type
    assert response.status_code == 400
    assert "application/x-www-form-urlencoded" in response.text
    padded = {**ONE_CLICK, "padding": "x" * 20_000}
    response = httpx.post(url, data=padded)
    assert response.status_code == 400
    assert "at most 16384 bytes" in response.text
    assert server.state() == before


def test_replayed_token(server: Server) -> None:
    url = server.url("guest5@example.com")
    for _ in range(3):
        assert httpx.post(url, data=ONE_CLICK).status_code == 200
    assert len(suppressed(server, "guest5@example.com")) == 1
    assert len(unsubscribed(server, "guest5@example.com")) == 1


def test_campaign_unknown_to_store(server: Server) -> None:
    response = httpx.post(server.url("guest6@example.com", "autumn-fair"), data=ONE_CLICK)
    assert response.status_code == 200
    assert suppressed(server, "guest6@example.com") == [
        ("guest6@example.com", "unsubscribed", 0, "autumn-fair")
    ]
    assert unsubscribed(server, "guest6@example.com") == []


def test_logs_mask_address(tmp_path: Path) -> None:
    store_path = tmp_path / "mailblast.db"
    make_store(store_path)
    output: list[str] = []
    token = make_token(SECRET.encode(), CAMPAIGN, "guest7@example.com")
    with serving(store_path, ENV, output=output) as base:
        url = f"{base}/unsubscribe?token={token}"
        assert httpx.post(url, data=ONE_CLICK).status_code == 200
    [text] = output
    assert f"campaign {CAMPAIGN}: g***@example.com unsubscribed by one-click POST" in text
    assert "guest7" not in text
    assert token not in text
    assert token.split(".")[1] not in text
    assert SECRET not in text


def test_missing_secret_answers_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILBLAST_UNSUBSCRIBE_SECRET", raising=False)
    store_path = tmp_path / "mailblast.db"
    make_store(store_path)
    token = make_token(SECRET.encode(), CAMPAIGN, "guest8@example.com")
    with serving(store_path) as base:
        url = f"{base}/unsubscribe?token={token}"
        post = httpx.post(url, data=ONE_CLICK)
        get = httpx.get(url)
    assert post.status_code == 503
    assert get.status_code == 503
    assert "not configured" in post.text
    assert "MAILBLAST_UNSUBSCRIBE_SECRET" in post.text
    store = SQLiteStore(store_path)
    assert store.count_suppressions() == 0
    store.close()


def test_custom_path(tmp_path: Path) -> None:
    store_path = tmp_path / "mailblast.db"
    make_store(store_path)
    token = make_token(SECRET.encode(), CAMPAIGN, "guest8@example.com")
    with serving(store_path, ENV, "--unsubscribe-path", "/u/stop") as base:
        moved = httpx.post(f"{base}/u/stop?token={token}", data=ONE_CLICK)
        default = httpx.post(f"{base}/unsubscribe?token={token}", data=ONE_CLICK)
    assert moved.status_code == 200
    assert default.status_code == 404


def test_invalid_path_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--unsubscribe-path", "unsubscribe?x=1"])
    assert exited.value.code == 2
    assert "invalid path 'unsubscribe?x=1'" in capsys.readouterr().err
