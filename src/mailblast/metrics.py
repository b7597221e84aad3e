"""Prometheus metrics: live ones from a sending run, and the same families computed from a store.

``mailblast send --metrics HOST:PORT`` serves :class:`SendMetrics`, fed by the recorder with each
delivery record as it is written, from its own registry (never the process-wide default).
``mailblast serve`` computes the same counters at each scrape from the store's aggregates with
:class:`StoreCollector`, so both agree once the records are committed.

Counters count delivery records with a command (attempts): ``mailblast_messages_total`` by the
state the attempt led to, ``mailblast_attempts_total`` by reply class. A message ends in exactly
one sent, bounced, failed or expired record, so those series equal ``mailblast status``. A
message deferred three times adds three to ``state="deferred"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mailblast.errors import MailblastError, StoreError
from mailblast.report import reply_class
from mailblast.store.base import MESSAGE_STATES, ReplyGroup, Store

if TYPE_CHECKING:
    from mailblast.engine import Engine
    from mailblast.relay.pool import RelayState
    from mailblast.store.base import LogRecord

logger = logging.getLogger("mailblast.metrics")

# Send durations in seconds, from one SMTP transaction on a warm session to a slow relay.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_POLL_SECONDS = 2.0
NO_RELAY = "none"  # label value of attempts that never reached a relay

HELP = {
    "messages": "Attempts by the state they led the message to (sent, deferred, bounced, ...)",
    "attempts": "Attempts by reply class (success, temporary, recipient, connection, ...)",
    "duration": "Time from MAIL FROM to the reply to the end of DATA, or to a session failure",
    "in_flight": "Messages claimed by a sending run and not yet recorded",
    "queue_depth": "Messages queued or deferred, waiting to be sent",
    "campaign_messages": "Messages of the campaign in each state now",
    "relay_up": "1 while the sending run can use the relay, 0 while it is taken out or backing off",
}


def parse_address(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9101`` for IPv6) for the metrics listener."""
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MailblastError(
            f"--metrics {value!r} is not HOST:PORT; give an address and a port such as"
            " 127.0.0.1:9101"
        )
    return host, int(port_text)


class SendMetrics:
    """The metrics of one sending run, in their own registry."""

    def __init__(self, campaign: str) -> None:
        self.campaign = campaign
        self.registry = CollectorRegistry()
        registry = self.registry

        self.messages = Counter(
            "mailblast_messages",
            HELP["messages"],
            ["campaign", "relay", "state"],
            registry=registry,
        )
        self.attempts = Counter(
            "mailblast_attempts", HELP["attempts"], ["relay", "reply_class"], registry=registry
        )
        self.duration = Histogram(
            "mailblast_send_duration_seconds",
            HELP["duration"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

        self.in_flight = Gauge(
            "mailblast_in_flight", HELP["in_flight"], ["campaign"], registry=registry
        )
        self.queue_depth = Gauge(
            "mailblast_queue_depth", HELP["queue_depth"], ["campaign"], registry=registry
        )
        self.campaign_messages = Gauge(
            "mailblast_campaign_messages",
            HELP["campaign_messages"],
            ["campaign", "state"],
            registry=registry,
        )
        self.relay_up = Gauge("mailblast_relay_up", HELP["relay_up"], ["relay"], registry=registry)

        self._poller: asyncio.Task[None] | None = None
        self._server: Any = None

    def observe(self, record: LogRecord) -> None:
        """Count one delivery record; the recorder calls this for each record it is given."""
        if record.command is None:
            return
        relay = record.relay or NO_RELAY
        group = ReplyGroup(record.type, record.command, record.code, record.status, 1, record.text)
        self.messages.labels(self.campaign, relay, record.type).inc()
        self.attempts.labels(relay, reply_class(group)).inc()
        if record.duration is not None:
            self.duration.observe(record.duration)

    def attach(self, engine: Engine) -> None:
        """Feed the metrics from a starting engine; call it on the engine's event loop."""
        engine.recorder.observer = self.observe
        self.in_flight.labels(self.campaign).set_function(lambda: len(engine._claimed))
        for relay in engine.pool.relays:
            self.relay_up.labels(relay.name).set_function(_usable_now(engine, relay))
        self._poller = asyncio.get_running_loop().create_task(self._poll_counts(engine))

    async def _poll_counts(self, engine: Engine) -> None:
        """Refresh the per-state gauges from the store until the engine stops."""
        while not engine.stopping.is_set():
            try:
                counts = await engine._db(engine.store.counts, engine.row.id)
            except StoreError as error:
                # The engine stops on store failures of its own; the gauges keep their values.
                logger.warning(
                    "campaign %s: cannot read counts for metrics: %s", self.campaign, error
                )
                return
            self.set_counts(counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.stopping.wait(), QUEUE_POLL_SECONDS)

    def set_counts(self, counts: dict[str, int]) -> None:
        for state in MESSAGE_STATES:
            self.campaign_messages.labels(self.campaign, state).set(counts.get(state, 0))
        queued = counts.get("queued", 0) + counts.get("deferred", 0)
        self.queue_depth.labels(self.campaign).set(queued)

    def serve(self, host: str, port: int) -> None:
        """Serve the registry over HTTP at ``/metrics`` in a daemon thread until :meth:`stop`."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise MailblastError(
                f"cannot serve metrics on {host}:{port}: {error.strerror}; choose another"
                " --metrics address"
            ) from error
        logger.info("serving metrics on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _usable_now(engine: Engine, relay: RelayState[Any]) -> Callable[[], float]:
    return lambda: float(relay.usable(engine.pool.clock()))


class StoreCollector(Collector):
    """Compute the metric families of every campaign in a store at each collection.

    ``collect`` queries the store, so call it where the store may be used (``mailblast serve``
    runs it in the store's worker thread). ``mailblast_relay_up`` is not in it, because relay
    health is kept in the memory of a sending run, not in the store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "mailblast_messages", HELP["messages"], labels=["campaign", "relay", "state"]
        )
        attempts: dict[tuple[str, str], int] = defaultdict(int)
        gauges = _StateGauges()
        histogram = [0] * len(DURATION_BUCKETS)
        duration_sum = 0.0
        duration_count = 0
        for campaign in self.store.list_campaigns():
            by_state: dict[tuple[str, str], int] = defaultdict(int)
            for relay, group in self.store.reply_groups(campaign.id):
                by_state[(relay or NO_RELAY, group.type)] += group.count
                attempts[(relay or NO_RELAY, reply_class(group))] += group.count
            for (relay, state), count in sorted(by_state.items()):
                messages.add_metric([campaign.name, relay, state], count)
            gauges.add(campaign.name, self.store.counts(campaign.id))
            cumulative, total, count = self.store.duration_histogram(campaign.id, DURATION_BUCKETS)
            histogram = [old + new for old, new in zip(histogram, cumulative, strict=True)]
            duration_sum += total
            duration_count += count
        yield messages
        yield _attempts_family(attempts)
        yield _histogram_family(histogram, duration_sum, duration_count)
        yield from gauges.families()


class _StateGauges:
    """The per-campaign gauges computed from the store's counts by state."""

    def __init__(self) -> None:
        self.in_flight = GaugeMetricFamily(
            "mailblast_in_flight", HELP["in_flight"], labels=["campaign"]
        )
        self.queue_depth = GaugeMetricFamily(
            "mailblast_queue_depth", HELP["queue_depth"], labels=["campaign"]
        )
        self.states = GaugeMetricFamily(
            "mailblast_campaign_messages", HELP["campaign_messages"], labels=["campaign", "state"]
        )

    def add(self, campaign: str, counts: dict[str, int]) -> None:
        self.in_flight.add_metric([campaign], counts.get("sending", 0))
        self.queue_depth.add_metric([campaign], counts.get("queued", 0) + counts.get("deferred", 0))
        for state in MESSAGE_STATES:
            self.states.add_metric([campaign, state], counts.get(state, 0))

    def families(self) -> Iterator[Metric]:
        yield self.in_flight
        yield self.queue_depth
        yield self.states


def _attempts_family(attempts: dict[tuple[str, str], int]) -> Metric:
    family = CounterMetricFamily(
        "mailblast_attempts", HELP["attempts"], labels=["relay", "reply_class"]
    )
    for (relay, name), count in sorted(attempts.items()):
        family.add_metric([relay, name], count)
    return family


def _histogram_family(cumulative: list[int], total: float, count: int) -> Metric:
    buckets = [
        (_bound(bound), value) for bound, value in zip(DURATION_BUCKETS, cumulative, strict=True)
    ]
    buckets.append(("+Inf", count))
    family = HistogramMetricFamily("mailblast_send_duration_seconds", HELP["duration"])
    family.add_metric([], buckets, total)
    return family


def _bound(value: float) -> str:
    """Write a bucket bound as prometheus-client's own histograms do (``0.5``, ``1.0``)."""
    return floatToGoString(value)
