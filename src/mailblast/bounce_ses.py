"""Amazon SES bounce and complaint notifications, delivered by e-mail through Amazon SNS.

The body is one JSON object: ``notificationType`` is Bounce, Complaint or Delivery, and
``bounce.bouncedRecipients`` or ``complaint.complainedRecipients`` lists the addresses. A
Permanent bounce type is SES's own verdict that the address does not exist or was
suppressed; Transient and Undetermined are temporary.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any

from mailblast.bounce_text import decoded_text

# SNS e-mail notifications in the test corpus break long lines with "!" and a newline.
_LINE_BREAK = re.compile(r"!\r?\n ")


def ses_notification(message: Message) -> dict[str, Any] | None:
    """Return the SES notification a message carries, or None when it carries none."""
    if message.is_multipart():
        return None
    text = _LINE_BREAK.sub("", decoded_text(message))
    start = text.find("{")
    if start < 0 or '"notificationType"' not in text:
        return None
    try:
        notification, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return notification if isinstance(notification, dict) else None


def ses_recipients(notification: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the recipient entries of a Bounce or Complaint notification."""
    kind = str(notification.get("notificationType", "")).lower()
    body = notification.get(kind) or {}
    key = "bouncedRecipients" if kind == "bounce" else "complainedRecipients"
    entries = body.get(key) or [] if isinstance(body, dict) else []
    return [entry for entry in entries if isinstance(entry, dict) and entry.get("emailAddress")]
