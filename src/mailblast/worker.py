"""A worker: send a campaign that is already in a store, from any machine that can reach it.

The campaign's settings, templates and secret references come from the store, where
``mailblast send`` saved them; the secret values come from this machine's environment or files.
The list is loaded once, by ``send``; a worker waits until the load has finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mailblast.blast import (
    Summary,
    build_composer,
    finish_sending,
    require_campaign,
    run_engine,
)
from mailblast.config import Campaign
from mailblast.engine import Engine, RunStats
from mailblast.errors import MailblastError
from mailblast.render import CompiledTemplates
from mailblast.store import open_store
from mailblast.store.base import CampaignRow
from mailblast.store.sql import SQLStore

logger = logging.getLogger("mailblast.worker")

LOAD_POLL_SECONDS = 1.0


def choose_campaign(store: SQLStore, name: str | None) -> CampaignRow:
    """Return the named campaign, or the only one still to send when no name is given."""
    if name is not None:
        return require_campaign(store, name)
    open_rows = [row for row in store.list_campaigns() if row.status in ("active", "paused")]
    if len(open_rows) == 1:
        return open_rows[0]
    names = ", ".join(row.name for row in open_rows) or "none"
    raise MailblastError(
        f"store {store.path} has {len(open_rows)} campaigns to send ({names});"
        " name one with --campaign NAME"
    )


def reject_second_sender(store: SQLStore, row: CampaignRow, lease: float) -> None:
    """Raise when another run is sending the campaign from a SQLite store, which has one machine.

    Each process there keeps the relays' connections and rate in memory, so a second sender
    would double the connections and rate each relay gets. ``send --processes N`` splits the
    limits instead.
    """
    if store.shared:
        return
    now = time.time()
    for run in store.runs(row.id):
        if run["heartbeat_at"] >= now - lease:
            raise MailblastError(
                f"campaign {row.name} is being sent from {store.path} by pid {run['pid']} on"
                f" {run['host']}; with a SQLite store each sending process keeps its own relay"
                " limits, so a second sender would exceed them. Use 'mailblast send --processes N'"
                " on one machine, or a PostgreSQL store for workers on several"
            )


def wait_for_load(store: SQLStore, row: CampaignRow) -> CampaignRow:
    """Return the campaign's row once its list is fully queued."""
    if row.loaded_at is None:
        logger.info("campaign %s: waiting for 'mailblast send' to load the list", row.name)
    while row.loaded_at is None:
        time.sleep(LOAD_POLL_SECONDS)
        row = require_campaign(store, row.name)
    return row


def work(
    location: str,
    name: str | None = None,
    *,
    wait: bool = True,
    install_signal_handlers: bool = False,
    on_start: Callable[[Engine], None] | None = None,
) -> tuple[Summary, RunStats]:
    """Send a stored campaign's due messages alongside any other workers of it."""
    with open_store(location) as store:
        row = choose_campaign(store, name)
        if row.status == "cancelled":
            raise MailblastError(f"campaign {row.name} was cancelled; nothing more is sent")
        campaign = Campaign.from_dict(row.settings)
        reject_second_sender(store, row, campaign.sending.lease)
        for relay in campaign.relays:
            relay.password()  # an unset variable or unreadable file stops here
        # The list's columns were checked by 'send' when it loaded the list. The unsubscribe
        # secret and the DKIM keys are read here, like the relay passwords.
        composer = build_composer(campaign, CompiledTemplates(campaign.templates))
        row = wait_for_load(store, row)
        engine = Engine(store, campaign, row, composer)
        stats = run_engine(engine, wait, install_signal_handlers, on_start)
        return finish_sending(store, campaign, engine.row), stats
