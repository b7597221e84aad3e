"""Durable storage of campaigns, messages, the delivery log and the suppression list."""

from __future__ import annotations

from mailblast.errors import StoreError
from mailblast.store.sql import SQLStore
from mailblast.store.sqlite import SQLiteStore


def open_store(
    location: str,
    *,
    read_only: bool = False,
    password_env: str | None = None,
    upgrade: bool = True,
) -> SQLStore:
    """Open the store at a SQLite path or a ``postgresql://user@host/db`` URL.

    Opening applies pending migrations to a SQLite file and to an empty PostgreSQL database;
    a PostgreSQL database shared by several machines is upgraded with ``mailblast db upgrade``.
    """
    if "://" in location:
        # Imported here: psycopg and libpq add about 12 MB to a process that uses SQLite.
        from mailblast.store.postgres import URL_SCHEMES, PostgresStore

        scheme = location.split("://", 1)[0]
        if scheme not in URL_SCHEMES:
            raise StoreError(
                f"store {scheme}://… is not supported; use a SQLite file path or a"
                " postgresql://user@host/database URL"
            )
        return PostgresStore(location, password_env=password_env, upgrade=upgrade)
    return SQLiteStore(location, read_only=read_only, upgrade=upgrade)


__all__ = ["SQLStore", "SQLiteStore", "StoreError", "open_store"]
