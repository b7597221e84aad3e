"""Find the message in the store that a returned message is about.

Three ways, the surest first:

1. VERP: the campaign's envelope sender contains ``{token}`` and the engine sets the token to
   the message's store id. The address a bounce was delivered to (To, Delivered-To,
   X-Original-To, Envelope-To) therefore names the message exactly. This holds even when the
   recipient forwarded the mail and the bounce names another address.
2. Message-ID: the returned message's Message-ID (or In-Reply-To / References) is derived
   from the campaign name and the recipient's address key (compose.message_id_for).
3. Address: the newest message to the recipient's address key, in any campaign.
"""

from __future__ import annotations

import re
from email.message import Message
from email.utils import getaddresses

from mailblast.compose import message_id_for
from mailblast.recipients import normalise_address
from mailblast.store.base import CampaignRow, MessageRef, Store

_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_TOKEN_PATTERN = r"(?P<token>[0-9]+)"


class MessageFinder:
    """Match bounces to messages of the campaigns in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.campaigns = store.list_campaigns()
        self._verp = [
            (campaign, pattern)
            for campaign in self.campaigns
            if (pattern := _verp_pattern(str(campaign.settings.get("envelope_sender", ""))))
        ]

    def by_verp(self, message: Message, original: Message | None) -> MessageRef | None:
        """Return the message whose VERP envelope sender the bounce was delivered to.

        The Return-Path of the returned copy, when the bounce includes it, names it too.
        """
        addresses = _envelope_addresses(message)
        if original is not None:
            addresses += [a for _, a in getaddresses(original.get_all("Return-Path", [])) if a]
        for address in addresses:
            for campaign, pattern in self._verp:
                match = pattern.fullmatch(address)
                if match is None:
                    continue
                found = self.store.find_message(int(match.group("token")))
                if found is not None and found.campaign_id == campaign.id:
                    return found
        return None

    def by_message_id(self, message_ids: list[str], keys: list[str]) -> MessageRef | None:
        """Return the message with one of the Message-IDs, sent to one of the address keys."""
        wanted = {_local_part(message_id) for message_id in message_ids}
        if not wanted:
            return None
        for campaign in self.campaigns:
            for key in keys:
                if _local_part(message_id_for(campaign.name, key, "invalid")) in wanted:
                    found = self._in_campaign(campaign, key)
                    if found is not None:
                        return found
        return None

    def message_id_of(self, message_ids: list[str], found: MessageRef) -> str | None:
        """Return the one of ``message_ids`` that is the Message-ID of ``found``, if any.

        A bounce matched by address can quote another message, whose Message-ID is not ours.
        """
        campaign = next((c for c in self.campaigns if c.id == found.campaign_id), None)
        if campaign is None:
            return None
        ours = _local_part(message_id_for(campaign.name, found.key, "invalid"))
        return next((m.strip() for m in message_ids if _local_part(m) == ours), None)

    def by_address(self, key: str) -> MessageRef | None:
        """Return the newest message to the address key, preferring one that was sent."""
        messages = self.store.find_messages_by_key(key)
        sent = [m for m in messages if m.state in ("sent", "bounced")]
        candidates = sent or messages
        return candidates[0] if candidates else None

    def _in_campaign(self, campaign: CampaignRow, key: str) -> MessageRef | None:
        messages = self.store.find_messages_by_key(key)
        return next((m for m in messages if m.campaign_id == campaign.id), None)


def address_key(address: str) -> str | None:
    """Return the de-duplication key of an address, or None when it is not valid."""
    try:
        return normalise_address(address)[1]
    except ValueError:
        return None


def _verp_pattern(envelope_sender: str) -> re.Pattern[str] | None:
    if "{token}" not in envelope_sender:
        return None
    parts = [re.escape(part) for part in envelope_sender.split("{token}")]
    return re.compile(_TOKEN_PATTERN.join(parts), re.I)


def _envelope_addresses(message: Message) -> list[str]:
    values = [str(v) for name in _ENVELOPE_HEADERS for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(values) if address]


def _local_part(message_id: str) -> str:
    return message_id.strip().strip("<>").partition("@")[0].lower()
