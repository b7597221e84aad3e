"""Process returned messages: record each bounce, suppress dead addresses, keep the rest.

For every message read from the given paths:

- a hard bounce suppresses the address (reason "hard-bounce") and a complaint suppresses it
  with reason "complaint";
- a soft bounce suppresses it only when the address has ``soft_bounce_limit`` soft bounces
  (reason "soft-bounce");
- a sender or policy block never suppresses the recipient: it is recorded and reported,
  because the fix is on the sending side;
- a delay notice (DSN Action: delayed) is recorded as ``deferred`` and changes nothing else;
- an auto-reply is counted and ignored;
- ``unsubscribe <token>`` in the Subject with a valid token suppresses the address with reason
  "unsubscribed";
- anything that cannot be read, classified or matched to a message in the store is copied to
  the review folder and counted. Source files are only read, never changed or deleted.

Each bounce, delay and complaint of a matched message is a delivery record: ``bounced`` for
hard and soft bounces and blocks (the message was not delivered, so a ``sent`` message turns
``bounced``), ``deferred`` for a delay, ``complaint`` for a complaint. The store keeps one row
per returned message and recipient, so processing the same message again changes nothing.
Suppressions are global (campaign 0): an address that does not exist, complained or asked to
unsubscribe is not mailed by any campaign.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from mailblast.bounce_match import MessageFinder, address_key
from mailblast.bounce_report import BounceClass, Failure, Report, ReportKind, read_report
from mailblast.mailboxes import MailboxError, StoredMessage
from mailblast.store.base import EVERY_CAMPAIGN, BounceEvent, LogRecord, MessageRef, Store
from mailblast.unsubscribe import InvalidToken, verify_token

log = logging.getLogger("mailblast.bounces")

DEFAULT_SOFT_BOUNCE_LIMIT = 3
SUPPRESSION_REASONS = {
    BounceClass.HARD: "hard-bounce",
    BounceClass.SOFT: "soft-bounce",
    BounceClass.COMPLAINT: "complaint",
}
UNSUBSCRIBED = "unsubscribed"
_MAX_TEXT = 500
# Delivery record type and text label of each outcome.
_RECORDS = {
    "hard": ("bounced", "hard bounce"),
    "soft": ("bounced", "soft bounce"),
    "block": ("bounced", "sender or policy block; recipient not suppressed"),
    "delayed": ("deferred", "delay notice"),
    "complaint": ("complaint", "complaint"),
}


@dataclass(slots=True)
class BounceSettings:
    """Settings of bounce processing."""

    soft_bounce_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT
    review_dir: Path | None = None
    unsubscribe_secret: bytes | None = None


@dataclass(slots=True)
class BounceSummary:
    """The totals of one run: messages read, outcomes per class, suppressions and reviews."""

    messages: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0
    review: int = 0
    blocks: list[str] = field(default_factory=list)  # "address: diagnostic" of each block


class BounceProcessor:
    """Process returned messages into one store."""

    def __init__(
        self, store: Store, settings: BounceSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.finder = MessageFinder(store)
        self.summary = BounceSummary()
        self._campaign_names: dict[int, str] = {}

    def process(self, stored: StoredMessage) -> None:
        """Process one returned message. A message that cannot be handled goes to review."""
        self.summary.messages += 1
        message = email.message_from_bytes(stored.data, policy=email.policy.compat32)
        try:
            report = read_report(message)
        except (LookupError, ValueError, TypeError, AttributeError, IndexError) as error:
            # Malformed MIME can trip the email package in many ways. One bad message must not
            # stop the run, so it goes to review with the error.
            self._review(stored, f"cannot be parsed: {type(error).__name__}: {error}")
            return
        fingerprint = _fingerprint(message, stored.data)

        if report.kind is ReportKind.AUTO_REPLY:
            self.summary.counts["auto-reply"] += 1
        elif report.kind is ReportKind.UNSUBSCRIBE:
            self._unsubscribe(stored, report, fingerprint)
        elif report.kind is ReportKind.UNRECOGNISED:
            self._review(stored, "not a bounce, complaint, auto-reply or unsubscribe request")
        else:
            self._failures(stored, message, report, fingerprint)

    def _failures(
        self, stored: StoredMessage, message: Message, report: Report, fingerprint: str
    ) -> None:
        verp = self.finder.by_verp(message, report.original)
        failures = report.failures
        if not failures and verp is not None and report.kind is ReportKind.COMPLAINT:
            # Providers often redact the complainant; the VERP address still names it.
            failures = [Failure(verp.address, BounceClass.COMPLAINT)]
        unmatched = []
        for failure in failures:
            found = self._match(failure, verp, report, message)
            if found is None:
                unmatched.append(failure.recipient)
                continue
            self._apply(failure, found, report, fingerprint)
        if unmatched:
            self._review(stored, f"no message in the store for: {', '.join(unmatched)}")
        elif not failures:
            self._review(stored, "a bounce that names no failed recipient")

    def _match(
        self, failure: Failure, verp: MessageRef | None, report: Report, message: Message
    ) -> MessageRef | None:
        keys = [key for address in failure.addresses if (key := address_key(address))]
        if verp is not None and (len(report.failures) <= 1 or verp.key in keys):
            return verp
        found = self.finder.by_message_id(report.original_message_ids(message), keys)
        for key in keys:
            found = found or self.finder.by_address(key)
        return found

    def _apply(
        self, failure: Failure, target: MessageRef, report: Report, fingerprint: str
    ) -> None:
        outcome = _outcome(failure)
        event_id = f"{fingerprint}\n{target.key}"
        if self.store.bounce_recorded(event_id):
            self.summary.counts["duplicate"] += 1
            return

        now = self.clock()
        if failure.bounce_class in (BounceClass.HARD, BounceClass.COMPLAINT):
            self._suppress(target, SUPPRESSION_REASONS[failure.bounce_class], now)
        kind, label = _RECORDS[outcome]
        record = LogRecord(
            type=kind,
            time=now,
            message=target.id,
            message_id=self.finder.message_id_of(_original_message_ids(report), target),
            recipient=target.address,
            code=failure.code,
            status=failure.status,
            text=f"{label}: {failure.diagnostic}"[:_MAX_TEXT].rstrip(": "),
        )
        mark = outcome in ("hard", "soft", "block")
        event = BounceEvent(event_id, target.key, outcome, target.campaign_id, record, mark)
        self.store.record_bounce(event)
        self.summary.counts[outcome] += 1

        if outcome == "block":
            # Diagnostics often start with the address, which the line already names.
            diagnostic = failure.diagnostic.removeprefix(target.address).lstrip(" :")
            self.summary.blocks.append(f"{target.address}: {_shorten(diagnostic, 200)}")
            log.warning("sender or policy block for %s: %s", target.address, failure.diagnostic)
        if outcome == "soft" and self._soft_limit_reached(target.key):
            self._suppress(target, SUPPRESSION_REASONS[BounceClass.SOFT], now)

    def _soft_limit_reached(self, key: str) -> bool:
        # NOTE: a run killed between recording a soft bounce and this check leaves the address
        # unsuppressed until its next soft bounce, whose check counts every earlier one.
        return self.store.count_soft_bounces(key) >= self.settings.soft_bounce_limit

    def _suppress(self, target: MessageRef, reason: str, now: float) -> None:
        origin = self._campaign_name(target.campaign_id)
        if self.store.add_suppression(
            target.key, target.address, reason, EVERY_CAMPAIGN, now, origin=origin
        ):
            self.summary.suppressed += 1

    def _campaign_name(self, campaign_id: int) -> str | None:
        if campaign_id not in self._campaign_names:
            names = {row.id: row.name for row in self.store.list_campaigns()}
            self._campaign_names.update(names)
        return self._campaign_names.get(campaign_id)

    def _unsubscribe(self, stored: StoredMessage, report: Report, fingerprint: str) -> None:
        secret = self.settings.unsubscribe_secret
        if secret is None:
            self._review(stored, "unsubscribe request, but no unsubscribe secret is configured")
            return
        try:
            subject = verify_token(secret, report.unsubscribe_token or "")
        except InvalidToken as error:
            self._review(stored, f"unsubscribe request with an invalid token: {error}")
            return
        key = address_key(subject.address)
        if key is None:
            self._review(stored, f"unsubscribe token names an invalid address {subject.address!r}")
            return

        event_id = f"{fingerprint}\n{key}"
        if self.store.bounce_recorded(event_id):
            self.summary.counts["duplicate"] += 1
            return
        campaign = self.store.get_campaign(subject.campaign)
        campaign_id = campaign.id if campaign is not None else EVERY_CAMPAIGN
        now = self.clock()
        if self.store.add_suppression(
            key, subject.address, UNSUBSCRIBED, EVERY_CAMPAIGN, now, origin=subject.campaign
        ):
            self.summary.suppressed += 1
        record = LogRecord(
            type="unsubscribed", time=now, recipient=subject.address, text="unsubscribed by mail"
        )
        self.store.record_bounce(
            BounceEvent(event_id, key, "unsubscribe", campaign_id, record, mark_bounced=False)
        )
        self.summary.counts["unsubscribe"] += 1

    def _review(self, stored: StoredMessage, reason: str) -> None:
        """Copy a message to the review folder with a note of the reason, and count it."""
        self.summary.review += 1
        log.info("for review: %s: %s", stored.source, reason)
        folder = self.settings.review_dir
        if folder is None:
            return
        name = hashlib.sha256(stored.data).hexdigest()[:24]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.eml").write_bytes(stored.data)
            note = f"{stored.source}\n{reason}\n"
            (folder / f"{name}.reason").write_text(note, encoding="utf-8")
        except OSError as error:
            # Without the copy the message would be lost from view, so the run stops here.
            raise MailboxError(
                f"cannot write to the review folder {folder}: {error.strerror};"
                " give a writable folder with --review"
            ) from error


def _outcome(failure: Failure) -> str:
    if failure.bounce_class is BounceClass.SOFT and (failure.action or "").startswith("delay"):
        return "delayed"
    return str(failure.bounce_class)


def _fingerprint(message: Message, data: bytes) -> str:
    """Identify a returned message: its own Message-ID, else a hash of its bytes."""
    message_id = str(message.get("Message-ID", "")).strip()
    if message_id:
        return f"message-id:{message_id}"
    return "sha256:" + hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def _original_message_ids(report: Report) -> list[str]:
    if report.original is None or not report.original.get("Message-ID"):
        return []
    return [str(report.original["Message-ID"]).strip()]


def _shorten(text: str, limit: int) -> str:
    """Return ``text`` cut at the last space before ``limit`` characters, marked with "..."."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."
