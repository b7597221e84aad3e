"""Capacity planning: how many relays a deadline needs, and each relay's sustained rate.

The sustained rate of a relay in a finished campaign is the median of its per-minute rates over
the minutes in which it accepted at least one message. Minutes are counted from the relay's
first acceptance, and the last minute is left out because it is partial. A send that lasted
under one minute has no full minute, so its rate is (accepted - 1) / (last - first acceptance),
taken over its bulk: the largest stretch of acceptances without a long gap. So a retry accepted
long after a burst of a few seconds does not stretch the span the burst is measured over.
Idle minutes (paused, throttled, between runs) do not count, so the figure is what the relay
sustains while it is sending, not the campaign's average.
"""

from __future__ import annotations

import itertools
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
# A gap between two acceptances longer than both of these ends a relay's bulk: a deferred
# message is retried after at least retry_initial (60 s by default), while a relay that is
# sending steadily at 1 msg/s or more accepts messages far less than 5 s apart.
LONG_GAP_SECONDS = 5.0
LONG_GAP_FACTOR = 10  # times the median gap between acceptances


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

    When the bulk of the acceptances came within a minute, the send has no full minute, so its
    rate is measured over the bulk and its minute count is 0.
    """
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0, 0
    bulk = bulk_of(times)
    if bulk[-1] - bulk[0] < MINUTE:
        if len(bulk) < 2 or bulk[-1] <= bulk[0]:
            bulk = times
        return (len(bulk) - 1) / (bulk[-1] - bulk[0]), 0
    first = times[0]
    per_minute: dict[int, int] = {}
    for moment in times:
        minute = int((moment - first) // MINUTE)
        per_minute[minute] = per_minute.get(minute, 0) + 1
    last_minute = int((times[-1] - first) // MINUTE)
    full = [count / MINUTE for minute, count in per_minute.items() if minute != last_minute]
    return statistics.median(full), len(full)


def bulk_of(times: Sequence[float]) -> Sequence[float]:
    """Return the largest stretch of sorted ``times`` with no long gap between neighbours.

    A gap is long when it exceeds both LONG_GAP_SECONDS and LONG_GAP_FACTOR times the median
    gap. Of stretches with equally many times, the first is returned.
    """
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    limit = max(LONG_GAP_SECONDS, LONG_GAP_FACTOR * statistics.median(gaps))
    stretches = []
    start = 0
    for index, gap in enumerate(gaps, start=1):
        if gap > limit:
            stretches.append(times[start:index])
            start = index
    stretches.append(times[start:])
    return max(stretches, key=len)


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
