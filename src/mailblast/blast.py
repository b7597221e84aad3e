"""Run a campaign end to end: save it in the store, load its list once, send, summarise.

The CLI is a thin layer over these functions, and tests call them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailblast import aio
from mailblast.alignment import aligned, organizational_domain
from mailblast.compose import Composer
from mailblast.config import Campaign
from mailblast.dkim import DkimSigner
from mailblast.engine import Engine, RunStats
from mailblast.errors import MailblastError
from mailblast.load import LoadReport, load_list
from mailblast.recipients import Recipient, list_columns, read_recipients
from mailblast.relay.classify import Scope
from mailblast.relay.client import CLOSE_SECONDS, wait_closed
from mailblast.relay.connection import RelayConnection, SessionError
from mailblast.render import CompiledTemplates
from mailblast.signingkey import load_signer
from mailblast.store import open_store
from mailblast.store.base import MESSAGE_STATES, CampaignRow
from mailblast.store.sql import SQLStore
from mailblast.unsubscribe import UnsubscribeLinks

logger = logging.getLogger("mailblast.engine")


@dataclass
class Summary:
    """Counts by state, per relay throughput and elapsed time of a campaign."""

    name: str
    status: str
    status_reason: str | None
    counts: dict[str, int]
    total: int
    load: dict[str, int]
    relays: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed: float | None = None
    next_due: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def compile_templates(campaign: Campaign) -> CompiledTemplates:
    """Compile the templates and check every variable against the list's columns."""
    columns = list_columns(campaign.recipients)
    return CompiledTemplates(campaign.templates, columns)


def prepare(campaign: Campaign) -> tuple[SQLStore, CampaignRow, Composer]:
    """Check templates, open the store and save the campaign's settings in it."""
    templates = compile_templates(campaign)
    for relay in campaign.relays:
        relay.password()  # an unset variable or unreadable file stops here, before any load
    composer = build_composer(campaign, templates)
    store = open_store(campaign.store, password_env=campaign.store_password_env)
    row = store.upsert_campaign(campaign.name, campaign.to_dict(), time.time())
    return store, row, composer


def build_composer(campaign: Campaign, templates: CompiledTemplates) -> Composer:
    """Build the campaign's Composer; reads the unsubscribe secret and the DKIM key files.

    Raises ConfigError when the secret is unset or a key file is unreadable or invalid.
    """
    return Composer(
        campaign,
        templates,
        unsubscribe=unsubscribe_links(campaign),
        dkim=dkim_signer(campaign),
    )


def dkim_signer(campaign: Campaign) -> DkimSigner | None:
    """Read the campaign's DKIM keys; raises ConfigError naming a bad key file."""
    return load_signer(campaign.dkim)


def unsubscribe_links(campaign: Campaign) -> UnsubscribeLinks | None:
    """Build the campaign's unsubscribe links; reading the secret raises ConfigError if unset."""
    if campaign.unsubscribe is None:
        return None
    return UnsubscribeLinks(campaign.unsubscribe, campaign.name, campaign.unsubscribe.secret())


def deliverability_warnings(campaign: Campaign) -> list[str]:
    """Return what would make mailbox providers junk or reject the campaign's messages.

    Since 2024 the large providers require bulk senders to pass DMARC, which needs the DKIM
    domain or the envelope sender domain aligned with the From domain, and to offer one-click
    unsubscribe.
    """
    warnings = []
    from_domain = campaign.from_domain
    dkim_domains = [settings.domain for settings in campaign.dkim]
    envelope_domain = campaign.envelope_sender.rpartition("@")[2]
    if not campaign.dkim:
        warnings.append(
            "no [dkim] table: messages are not DKIM-signed; create a key with"
            " `mailblast dkim keygen` and add [dkim]"
        )
    if not any(aligned(domain, from_domain) for domain in [*dkim_domains, envelope_domain]):
        dkim_text = f"the DKIM domain ({', '.join(dkim_domains)}) nor " if dkim_domains else ""
        warnings.append(
            f"neither {dkim_text}the envelope sender domain ({envelope_domain}) aligns with the"
            f" From domain ({from_domain}), so DMARC fails; sign with a domain under"
            f" {organizational_domain(from_domain)} or send from one"
        )
    if campaign.unsubscribe is None:
        warnings.append(
            "no [unsubscribe] table: messages carry no List-Unsubscribe header, which bulk"
            " senders must offer; add [unsubscribe] with the url that `mailblast serve` answers"
        )
    return warnings


def load_if_needed(
    store: SQLStore,
    campaign: Campaign,
    row: CampaignRow,
    progress: Callable[[LoadReport], None] | None = None,
) -> LoadReport | None:
    """Load the list unless a previous run finished loading it."""
    if row.loaded_at is not None:
        return None
    return load_list(store, campaign, row, progress)


def send(
    campaign: Campaign,
    *,
    wait: bool = True,
    install_signal_handlers: bool = False,
    on_start: Callable[[Engine], None] | None = None,
) -> tuple[Summary, RunStats, LoadReport | None]:
    """Load (the first time) and send the campaign; return its summary when the run stops."""
    store, row, composer = prepare(campaign)
    try:
        row, report = start_sending(store, campaign, row)
        engine = Engine(store, campaign, row, composer)
        stats = run_engine(engine, wait, install_signal_handlers, on_start)
        return finish_sending(store, campaign, row), stats, report
    finally:
        store.close()


def start_sending(
    store: SQLStore, campaign: Campaign, row: CampaignRow
) -> tuple[CampaignRow, LoadReport | None]:
    """Load the list if needed and make a finished campaign active again; return its row."""
    if row.status == "cancelled":
        raise MailblastError(f"campaign {campaign.name} was cancelled; nothing more is sent")
    report = load_if_needed(store, campaign, row)
    if row.status == "done":
        store.set_status(row.id, "active", None, time.time())
    return store.get_campaign(campaign.name) or row, report


def finish_sending(store: SQLStore, campaign: Campaign, row: CampaignRow) -> Summary:
    """Mark the campaign done when no message is left to send; return its summary."""
    summary = summarise(store, campaign.name)
    unfinished = any(summary.counts.get(s) for s in ("queued", "deferred", "sending"))
    if not unfinished and summary.status == "active":
        store.set_status(row.id, "done", None, time.time())
        summary.status = "done"
    return summary


def run_engine(
    engine: Engine,
    wait: bool,
    install_signal_handlers: bool,
    on_start: Callable[[Engine], None] | None = None,
) -> RunStats:
    """Run the engine on a new event loop until it stops."""
    try:
        return aio.run(_run_engine(engine, wait, install_signal_handlers, on_start))
    except asyncio.CancelledError:
        # A second SIGINT or SIGTERM cancelled the run; the next send takes back its claims.
        raise KeyboardInterrupt from None


async def _run_engine(
    engine: Engine,
    wait: bool,
    install_signal_handlers: bool,
    on_start: Callable[[Engine], None] | None,
) -> RunStats:
    if install_signal_handlers:
        _install_signal_handlers(engine)
    if on_start is not None:
        on_start(engine)
    return await engine.run(wait=wait)


def _install_signal_handlers(engine: Engine) -> None:
    """First SIGINT or SIGTERM: stop after in-flight messages. Second: stop at once."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def handle(signal_name: str) -> None:
        if not engine.stopping.is_set():
            logger.warning(
                "%s: finishing in-flight messages; press Ctrl-C again to stop now", signal_name
            )
            engine.stats.interrupted = True
            engine.request_stop(f"{signal_name} received")
            return
        logger.warning(
            "%s again: stopping now; in-flight messages will be marked unknown", signal_name
        )
        if main_task is not None:
            main_task.cancel()

    for number, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        loop.add_signal_handler(number, handle, name)


def require_campaign(store: SQLStore, name: str) -> CampaignRow:
    """Return the campaign's row, or raise an error naming the campaign and the store."""
    row = store.get_campaign(name)
    if row is None:
        names = ", ".join(c.name for c in store.list_campaigns()) or "none"
        raise MailblastError(
            f"campaign {name!r} not found in store {store.path}; campaigns there: {names}"
        )
    return row


def summarise(store: SQLStore, name: str) -> Summary:
    """Build the summary of a campaign from the store alone."""
    row = require_campaign(store, name)
    counts = store.counts(row.id)
    relays = store.relay_totals(row.id)
    for totals in relays.values():
        span = max(totals["last"] - totals["first"], 1e-9)
        totals["rate"] = totals.get("sent", 0) / span if totals.get("sent", 0) > 1 else 0.0
    end = row.finished_at or time.time()
    return Summary(
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        counts={state: counts.get(state, 0) for state in MESSAGE_STATES},
        total=sum(counts.values()),
        load={
            "rows": row.rows_read,
            "rejected": row.rows_rejected,
            "duplicates": row.rows_duplicate,
            "suppressed": row.rows_suppressed,
        },
        relays=relays,
        elapsed=(end - row.started_at) if row.started_at else None,
        next_due=store.next_due(row.id),
        runs=store.runs(row.id),
    )


def first_recipients(campaign: Campaign, limit: int) -> Iterator[Recipient]:
    """Yield the first ``limit`` accepted rows of the list, for previews and proofs."""
    found = 0
    for item in read_recipients(campaign.recipients):
        if isinstance(item, Recipient):
            yield item
            found += 1
            if found >= limit:
                return


def preview(campaign: Campaign, row_number: int = 1, *, eight_bit: bool = False) -> bytes:
    """Return the exact bytes the ``row_number``-th accepted recipient would get.

    ``eight_bit`` gives the message as a relay that offers 8BITMIME gets it.
    """
    composer = build_composer(campaign, compile_templates(campaign))
    found = list(first_recipients(campaign, row_number))
    if len(found) < row_number:
        raise MailblastError(
            f"--row {row_number} is out of range: the list {campaign.recipients.path} has"
            f" {len(found)} acceptable rows"
        )
    recipient = found[-1]
    return composer.compose(
        recipient.key,
        recipient.address,
        recipient.fields,
        recipient.smtputf8,
        token="preview",
        eight_bit=eight_bit,
    ).data


def send_proofs(campaign: Campaign, test_to: str, limit: int) -> list[tuple[str, bool]]:
    """Send the first rows' messages to a proof address, outside the campaign's records."""
    return aio.run(_send_proofs(campaign, test_to, limit))


async def _send_proofs(campaign: Campaign, test_to: str, limit: int) -> list[tuple[str, bool]]:
    """Send proofs over the first relay that accepts a session; return (line, accepted) pairs."""
    composer = build_composer(campaign, compile_templates(campaign))
    results = []
    for relay in campaign.relays:
        connection = RelayConnection(relay)
        try:
            await connection.open()
        except SessionError as error:
            logger.warning("relay %s: cannot send proofs: %s", relay.name, error)
            continue
        try:
            for recipient in first_recipients(campaign, limit):
                # The proof address gets the row's personalisation; the row's own address is
                # neither the envelope recipient nor the To header.
                composed = composer.compose(
                    recipient.key,
                    test_to,
                    recipient.fields,
                    False,
                    token="proof",
                    eight_bit=connection.eight_bit_mime,
                )
                reply = await connection.send(
                    composed.envelope_sender, test_to, composed.data, False, _nothing
                )
                ok = reply.scope is Scope.SUCCESS
                row = f"line {recipient.line} ({recipient.address})"
                results.append((f"{row} via {relay.name}: {reply.describe()}", ok))
                if not ok and not connection.is_open:
                    break
        finally:
            await connection.quit()
            await wait_closed(CLOSE_SECONDS)
        return results
    raise MailblastError("no relay accepted a connection; the proofs were not sent")


async def _nothing() -> None:
    return None


def counts_json(summary: Summary) -> str:
    return json.dumps(summary.to_dict(), indent=2, default=str)


@contextlib.contextmanager
def opened(location: str) -> Iterator[SQLStore]:
    """Open an existing store for a command that takes a campaign name."""
    if "://" not in location and not Path(location).is_file():
        raise MailblastError(
            f"store {location} not found; give the campaign's store file with --store"
            " (the 'store' key of its campaign file, mailblast.db by default)"
        )
    store = open_store(location)
    try:
        yield store
    finally:
        store.close()
