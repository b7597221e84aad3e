"""Pause, resume and cancel a campaign through its store, for the CLI and the dashboard.

A sending run polls its campaign's status and follows the change within a second or so.
"""

from __future__ import annotations

from mailblast.errors import MailblastError
from mailblast.store.base import CampaignRow, Store

ACTIONS = ("pause", "resume", "cancel")


class ControlError(MailblastError):
    """The campaign's status does not allow the action, for example resuming a cancelled one."""


def check_action(row: CampaignRow, action: str) -> None:
    """Raise ControlError unless ``action`` applies to the campaign in its current status."""
    if row.status in ("cancelled", "done") and action != "cancel":
        raise ControlError(f"campaign {row.name} is {row.status}; it cannot be {action}d")


def apply_action(store: Store, row: CampaignRow, action: str, now: float) -> None:
    """Record the action's new status; cancel marks unsent messages at once if no run is sending."""
    check_action(row, action)
    if action == "pause":
        store.set_status(row.id, "paused", "paused by the operator", now)
    elif action == "resume":
        store.set_status(row.id, "active", None, now)
    elif action == "cancel":
        store.set_status(row.id, "cancelled", "cancelled by the operator", now)
        if not store.runs(row.id):
            store.cancel_remaining(row.id, now)
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
