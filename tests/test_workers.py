"""Campaigns on a PostgreSQL store: the send command, then workers on several processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.cli.main import main
from mailblast.sink import ThreadedSink
from mailblast.store import open_store


def test_send_command_on_postgres(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], postgres_url: str
) -> None:
    sink = start_sink(keep_messages=True)
    write_list(tmp_path / "attendees.csv", [*person_rows(300), ["not-an-address", "", "", "", ""]])
    relays = [relay_block("sink", sink.port, max_connections=3)]
    campaign_file = write_campaign(tmp_path, relays)

    assert main(["send", str(campaign_file), "--store", postgres_url]) == 0

    by_recipient = Counter(r for m in sink.stats.received for r in m.recipients)
    assert len(by_recipient) == 300
    assert max(by_recipient.values()) == 1
    assert not (tmp_path / "mailblast.db").exists()
    with open_store(postgres_url) as store:
        row = store.get_campaign("spring-gala")
        assert row is not None
        assert row.status == "done"
        assert row.rows_rejected == 1
        assert store.counts(row.id) == {"sent": 300}
        assert sum(1 for record in store.iter_log(row.id) if record["type"] == "sent") == 300
