"""The dashboard in headless Chromium: its figures, and pause, resume and cancel from the page."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Locator, Page, expect

from browser import Browser
from dashboard_campaigns import (
    CONTROL_TOKEN,
    build_sent_store,
    campaign_status,
    copy_store,
    slow_campaign,
    store_status,
)
from mailblast.sink import ThreadedSink
from serving import serving
from test_reliability import running_sender, wait_for

TOKEN = {"MAILBLAST_CONTROL_TOKEN": CONTROL_TOKEN}


@pytest.fixture(scope="module")
def sent_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sent_store(tmp_path_factory.mktemp("sent"))


def campaign_card(page: Page) -> Locator:
    return page.locator('[data-campaign="spring-gala"]')


def enter_token(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-state")).to_have_text("token set for this tab")


def test_dashboard_figures_match_status(sent_store: Path, tmp_path: Path, browser: Browser) -> None:
    store = copy_store(sent_store, tmp_path)
    status = store_status(store)
    counts = status["counts"]
    assert isinstance(counts, dict)

    with serving(store, TOKEN) as base:
        browser.page.goto(f"{base}/")
        card = campaign_card(browser.page)
        expect(card.locator('[data-field="status"]')).to_have_text("active")
        for state, count in counts.items():
            expect(card.locator(f'[data-state="{state}"]')).to_have_text(f"{count:,}")
        expect(card.locator('[data-field="sent"]')).to_have_text(f"{counts['sent']:,}")
        expect(card.locator('[data-field="total"]')).to_have_text(f"{status['total']:,}")
        expect(card.locator('[data-relay="primary"] [data-field="relay-state"]')).to_have_text("up")
        expect(card.locator('[data-bucket="due now"]')).to_have_text("0")
        expect(card.locator("[data-problem]").first).to_contain_text("<b>greylisted</b>")
        browser.screenshot("dashboard-after-campaign")

        buckets = card.locator("[data-bucket]").all_text_contents()
        assert sum(int(count) for count in buckets) == counts["deferred"]
        assert browser.page.locator("#injected").count() == 0
        assert browser.page.locator("#read-only").is_hidden()


def test_dashboard_pauses_running_campaign(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], browser: Browser
) -> None:
    sinks = [start_sink(), start_sink()]
    campaign = slow_campaign(tmp_path, sinks)
    store = tmp_path / "mailblast.db"

    def received() -> int:
        return sum(sink.stats.messages for sink in sinks)

    with running_sender(campaign, tmp_path / "send.log") as sender, serving(store, TOKEN) as base:
        page = browser.page
        page.goto(f"{base}/")
        card = campaign_card(page)
        status = card.locator('[data-field="status"]')
        enter_token(page, CONTROL_TOKEN)
        wait_for(lambda: received() > 80)
        expect(card.locator('[data-field="running"]')).to_have_text("1")
        expect(card.locator('[data-field="rate"]')).not_to_have_text("0.0")
        browser.screenshot("dashboard-mid-campaign")

        card.locator('button[data-action="pause"]').click()
        expect(status).to_have_text("paused")
        assert campaign_status(store) == "paused"
        time.sleep(2.5)
        paused_at = received()
        time.sleep(1.0)
        assert received() == paused_at
        browser.screenshot("dashboard-paused")

        card.locator('button[data-action="resume"]').click()
        expect(status).to_have_text("active")
        wait_for(lambda: received() > paused_at + 20)

        cancel_and_confirm(page, card)
        expect(status).to_have_text("cancelled")
        assert sender.wait(timeout=30) == 0

    final = store_status(store)
    final_counts = final["counts"]
    assert isinstance(final_counts, dict)
    assert final["status"] == "cancelled"
    assert final_counts["sent"] == received()
    assert final_counts["cancelled"] > 0


def cancel_and_confirm(page: Page, card: Locator) -> None:
    """Press cancel twice: dismiss the confirmation first (nothing changes), then accept it."""
    questions: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    card.locator('button[data-action="cancel"]').click()
    expect(page.locator("#notice")).to_have_text("Campaign spring-gala was not cancelled.")
    assert questions[0].startswith("Cancel campaign spring-gala?")
    expect(card.locator('[data-field="status"]')).to_have_text("active")

    page.once("dialog", lambda dialog: dialog.accept())
    card.locator('button[data-action="cancel"]').click()


def test_dashboard_rejects_wrong_token(sent_store: Path, tmp_path: Path, browser: Browser) -> None:
    store = copy_store(sent_store, tmp_path)

    with serving(store, TOKEN) as base:
        page = browser.page
        page.goto(f"{base}/")
        enter_token(page, "not-the-token")
        campaign_card(page).locator('button[data-action="pause"]').click()
        expect(page.locator("#notice")).to_have_text("Token rejected: wrong control token.")

    assert campaign_status(store) == "active"
