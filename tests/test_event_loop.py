"""The event loop choice: uvloop when installed, asyncio on request."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import aio, blast
from mailblast.config import load_campaign
from mailblast.errors import MailblastError
from mailblast.sink import ThreadedSink

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aio.EVENT_LOOP_VARIABLE, "asyncio")

    assert aio.run(loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop (the 'fast' extra) is not installed")
def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(aio.EVENT_LOOP_VARIABLE, raising=False)

    assert aio.run(loop_module()).startswith("uvloop")


def test_invalid_choice_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aio.EVENT_LOOP_VARIABLE, "trio")

    with pytest.raises(MailblastError, match="MAILBLAST_EVENT_LOOP='trio' is invalid"):
        aio.run(loop_module())


def test_send_on_asyncio_loop(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(aio.EVENT_LOOP_VARIABLE, "asyncio")
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(20))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 20
    assert sink.stats.messages == 20
