"""Capacity planning: how many relays a deadline needs, and each relay's sustained rate.

The sustained rate of a relay in a finished campaign is the median of its per-minute rates over
the minutes in which it accepted at least one message. Minutes are counted from the relay's
first acceptance, and the last minute is left out because it is partial. A send that lasted
under one minute has no full minute, so its rate is (accepted - 1) / (last - first acceptance).
Idle minutes (paused, throttled, between runs) do not count, so the figure is what the relay
sustains while it is sending, not the campaign's average.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailblast.errors import MailblastError
from mailblast.store.sql import SQLStore

MINUTE = 60.0
# The rule of thumb this replaces: one SMTP server per 50,000 messages for a 4 to 6 hour send.
RULE_MESSAGES_PER_SERVER = 50_000
RULE_HOURS = (4, 6)


@dataclass(frozen=True)
class RelayRate:
    """A relay's sustained rate measured from the delivery log, in messages per second."""

    relay: str
    rate: float
    accepted: int
    active_minutes: int


@dataclass(frozen=True)
class Plan:
    """The arithmetic of a capacity plan; rates are messages per second."""

    recipients: int
    seconds: float
    relay_rate: float

    @property
    def required_rate(self) -> float:
        return self.recipients / self.seconds

    @property
    def relays(self) -> int:
        return max(1, math.ceil(self.required_rate / self.relay_rate))

    @property
    def capacity(self) -> float:
        return self.relays * self.relay_rate

    @property
    def headroom(self) -> float:
        """Capacity above the required rate, as a fraction of the required rate."""
        return self.capacity / self.required_rate - 1

    @property
    def finish_seconds(self) -> float:
        return self.recipients / self.capacity

    @property
    def rule_of_thumb_servers(self) -> int:
        return max(1, math.ceil(self.recipients / RULE_MESSAGES_PER_SERVER))


def sustained_rate(times: Sequence[float]) -> tuple[float, int]:
    """Return (messages per second, full active minutes) for sorted acceptance times.

    A send shorter than a minute has no full minute, so its minute count is 0.
    """
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0, 0
    first = times[0]
    per_minute: dict[int, int] = {}
    for moment in times:
        minute = int((moment - first) // MINUTE)
        per_minute[minute] = per_minute.get(minute, 0) + 1
    last_minute = int((times[-1] - first) // MINUTE)
    full = [count / MINUTE for minute, count in per_minute.items() if minute != last_minute]
    if not full:
        return (len(times) - 1) / (times[-1] - first), 0
    return statistics.median(full), len(full)


def relay_rates(records: Iterable[dict[str, object]]) -> list[RelayRate]:
    """Measure every relay's sustained rate from delivery records (``type == "sent"`` only)."""
    times: dict[str, list[float]] = {}
    for record in records:
        if record["type"] == "sent" and record["relay"]:
            times.setdefault(str(record["relay"]), []).append(float(str(record["time"])))
    rates = []
    for relay, moments in sorted(times.items()):
        moments.sort()
        rate, minutes = sustained_rate(moments)
        rates.append(RelayRate(relay, rate, len(moments), minutes))
    return rates


def campaign_relay_rates(store: SQLStore, campaign_id: int, name: str) -> list[RelayRate]:
    """Measure the relays of a campaign in the store; raise when nothing can be measured."""
    # NOTE: this reads every delivery record of the campaign in Python. A store query grouped
    # by relay and minute would be faster on a million-message campaign.
    rates = [rate for rate in relay_rates(store.iter_log(campaign_id)) if rate.rate > 0]
    if not rates:
        raise MailblastError(
            f"campaign {name!r} has no relay with two or more accepted messages in its delivery"
            " log, so no rate can be measured; send it first or give --relay-rate"
        )
    return rates


def per_relay_rate(rates: Sequence[RelayRate]) -> float:
    """Return the median of the relays' sustained rates: the rate of a typical relay."""
    return statistics.median(rate.rate for rate in rates)


def validate_recipients(count: int) -> int:
    if count <= 0:
        raise MailblastError(
            f"invalid --recipients {count}: give the number of messages to send, greater than 0"
        )
    return count
