"""Durable storage of campaigns, messages, the delivery log and the suppression list."""

from __future__ import annotations

from mailblast.errors import StoreError
from mailblast.store.sqlite import SQLiteStore


def open_store(location: str, *, read_only: bool = False) -> SQLiteStore:
    """Open the store at a SQLite path; a URL with a scheme names another backend."""
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(
            f"store {scheme}://… is not supported by this version; use a SQLite file path"
        )
    return SQLiteStore(location, read_only=read_only)


__all__ = ["SQLiteStore", "StoreError", "open_store"]
