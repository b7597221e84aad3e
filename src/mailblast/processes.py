"""Send one campaign from several processes that share its store.

One event loop saturates one core long before loopback relays do, so ``send --processes N``
starts N sender processes. Each runs its own engine with its own share of every relay's
``max_connections`` and ``rate``. The shares add up to the relay's limits, so the limits hold in
total. Each engine claims messages under its own lease owner, so no message goes out twice.

The parent loads the list first, then forks the senders (after closing its store, since a
SQLite connection must not cross a fork), waits for them and builds the summary.

On a store that several machines share (PostgreSQL) the relays' limits are already held in the
store for every run together (see :mod:`mailblast.fleet`), so each process gets every relay
whole: the N processes then act as N workers of ``mailblast worker`` on this machine.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections import Counter
from dataclasses import replace
from multiprocessing.connection import Connection
from types import FrameType

from mailblast import blast
from mailblast.blast import Summary
from mailblast.config import Campaign, RelaySettings
from mailblast.engine import Engine, RunStats
from mailblast.errors import MailblastError
from mailblast.load import LoadReport
from mailblast.store import open_store

logger = logging.getLogger("mailblast.engine")

MAX_PROCESSES = 64


def relay_shares(relays: tuple[RelaySettings, ...], processes: int) -> list[list[RelaySettings]]:
    """Split each relay's connections (and its rate, in proportion) among the processes.

    A process whose share of a relay is zero connections leaves that relay out, and a process
    left with no relay at all is not started, so fewer processes than asked for may run.
    """
    shares: list[list[RelaySettings]] = [[] for _ in range(processes)]
    for relay in relays:
        base, extra = divmod(relay.max_connections, processes)
        for index in range(processes):
            connections = base + (1 if index < extra else 0)
            if connections == 0:
                continue
            rate = None if relay.rate is None else relay.rate * connections / relay.max_connections
            shares[index].append(replace(relay, max_connections=connections, rate=rate))
    return [share for share in shares if share]


def send_in_processes(
    campaign: Campaign, processes: int, *, wait: bool = True
) -> tuple[Summary, RunStats, LoadReport | None]:
    """Load the list if needed, send from ``processes`` engines, and return the summary."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise MailblastError(f"--processes {processes} must be between 1 and {MAX_PROCESSES}")
    store, row, _ = blast.prepare(campaign)
    try:
        row, report = blast.start_sending(store, campaign, row)
        shared = store.shared
    finally:
        store.close()

    if shared:
        shares = [list(campaign.relays)] * processes
    else:
        shares = relay_shares(campaign.relays, processes)
    logger.info("campaign %s: sending from %d processes", campaign.name, len(shares))
    stats = merge_stats(_run_children(campaign, shares, wait))

    store = open_store(campaign.store, password_env=campaign.store_password_env)
    try:
        return blast.finish_sending(store, campaign, row), stats, report
    finally:
        store.close()


def _run_children(
    campaign: Campaign, shares: list[list[RelaySettings]], wait: bool
) -> list[RunStats]:
    """Fork one sender per share, pass SIGTERM on to them, and collect their stats."""
    context = multiprocessing.get_context("fork")
    children = []
    for share in shares:
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(campaign, share, wait, sender), daemon=False)
        child.start()
        sender.close()
        children.append((child, receiver))

    def forward(number: int, frame: FrameType | None) -> None:
        # A terminal's Ctrl-C reaches every process of the group, so only SIGTERM is passed on.
        # NOTE: a SIGTERM sent to the whole group reaches each sender twice, which stops it at
        # once instead of after its in-flight messages. Send SIGTERM to this process alone.
        if number == signal.SIGTERM:
            for child, _ in children:
                if child.is_alive():
                    child.terminate()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, forward) for number in signals}
    try:
        return [_collect(child, receiver) for child, receiver in children]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _collect(child: multiprocessing.process.BaseProcess, receiver: Connection) -> RunStats:
    try:
        result: RunStats | str = receiver.recv()
    except EOFError:
        result = f"sender process {child.pid} ended without a result"
    child.join()
    if isinstance(result, str):
        raise MailblastError(result)
    return result


def _child(campaign: Campaign, share: list[RelaySettings], wait: bool, sender: Connection) -> None:
    """Run one engine over this process's share of the relays; send its stats to the parent."""
    store = open_store(campaign.store, password_env=campaign.store_password_env)
    try:
        row = blast.require_campaign(store, campaign.name)
        composer = blast.build_composer(campaign, blast.compile_templates(campaign))
        engine = Engine(store, replace(campaign, relays=tuple(share)), row, composer)
        result: RunStats | str = blast.run_engine(engine, wait, install_signal_handlers=True)
    except KeyboardInterrupt:
        result = "a sender process was stopped at once by a second SIGINT or SIGTERM"
    except MailblastError as error:
        result = f"a sender process failed: {error}"
    finally:
        store.close()
    sender.send(result)
    sender.close()


def merge_stats(parts: list[RunStats]) -> RunStats:
    """Add the sender processes' counters into one RunStats."""
    merged = RunStats(started=min(part.started for part in parts))
    merged.outcomes = sum((part.outcomes for part in parts), Counter())
    reasons = [part.stop_reason for part in parts if part.stop_reason]
    merged.stop_reason = reasons[0] if reasons else None
    dues = [part.next_due for part in parts if part.next_due is not None]
    merged.next_due = min(dues) if dues else None
    merged.interrupted = any(part.interrupted for part in parts)
    return merged
