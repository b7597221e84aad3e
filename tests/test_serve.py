from __future__ import annotations

from pathlib import Path

import httpx

from mailblast.store import open_store
from serving import serving


def test_serve_answers_health(tmp_path: Path) -> None:
    store_path = tmp_path / "mailblast.db"
    open_store(str(store_path)).close()

    with serving(store_path) as base:
        response = httpx.get(f"{base}/healthz")

    assert response.status_code == 200
    assert response.text == "ok\n"


def test_serve_rejects_short_secret(tmp_path: Path) -> None:
    store_path = tmp_path / "mailblast.db"
    open_store(str(store_path)).close()

    try:
        with serving(store_path, {"MAILBLAST_UNSUBSCRIBE_SECRET": "short"}):
            raise AssertionError("serve started with a 5-byte secret")
    except RuntimeError as error:
        assert "use at least 16" in str(error)
