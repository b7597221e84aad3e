"""The PostgreSQL store: one database shared by workers on several machines.

The connection runs in autocommit mode, so a read is its own short transaction and every write
method opens an explicit one. Claims lock the rows they take with ``FOR UPDATE SKIP LOCKED``, so
concurrent workers never wait for each other's batches. Passwords never come from the URL: libpq
reads PGPASSWORD or PGPASSFILE, or the caller passes one read from a named variable.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from mailblast.errors import StoreError
from mailblast.store import migrations
from mailblast.store.sql import SQLStore

URL_SCHEMES = ("postgresql", "postgres")
# Any constant serialises concurrent upgrades; this one spells "mailblas" in ASCII.
MIGRATION_LOCK = 0x6D61696C626C6173


def check_url(url: str) -> None:
    """Raise if the URL carries a password, which belongs in the environment or a passfile."""
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        redacted = url.replace(f":{parts.password}@", ":***@") if parts.password else url
        raise StoreError(
            f"store URL {redacted.split('?')[0]} contains a password; remove it and set PGPASSWORD,"
            " a PGPASSFILE, or the campaign key store_password_env naming a variable"
        )


def password_from(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise StoreError(
            f"environment variable {variable} (campaign.store_password_env) is not set;"
            " export it with the database password"
        )
    return value


class PostgresStore(SQLStore):
    """The Store interface on a PostgreSQL database."""

    errors = (psycopg.Error,)
    claim_lock = " FOR UPDATE SKIP LOCKED"
    domain_of_address = "lower(substr(address, strpos(address, '@') + 1))"
    shared = True

    def __init__(self, url: str, *, password_env: str | None = None, upgrade: bool = True) -> None:
        check_url(url)
        self.path = url
        self._queries: dict[str, str] = {}
        extra: dict[str, Any] = {}
        password = password_from(password_env)
        if password is not None:
            extra["password"] = password
        try:
            self.db = psycopg.connect(url, autocommit=True, **extra)
        except psycopg.Error as error:
            raise StoreError(
                f"cannot connect to store {url}: {error}".rstrip()
                + "; check that PostgreSQL runs there and accepts this user"
            ) from error
        try:
            self._prepare(upgrade)
        except StoreError:
            self.db.close()
            raise

    def _sql(self, text: str) -> str:
        query = self._queries.get(text)
        if query is None:
            query = self._queries[text] = text.replace("?", "%s")
        return query

    def _prepare(self, upgrade: bool) -> None:
        """Migrate unless the caller does (mailblast db upgrade, tests), then check the version."""
        if not upgrade:
            return
        if self.schema_version() == 0:
            self.upgrade()  # a new database; a used one is upgraded by 'mailblast db upgrade'
        migrations.check_version(self, "postgresql")

    def _transaction(self) -> AbstractContextManager[Any]:
        return self.db.transaction()

    def _write_soon(self, operation: str, function: Any, *args: Any) -> Any:
        # NOTE: a database crash can lose the last heartbeats, slot changes and budget counts,
        # so a relay may briefly see one more connection or message than its limits allow.
        def run() -> Any:
            self.db.execute("SET LOCAL synchronous_commit = off")
            return function(*args)

        return self._write(operation, run)

    def schema_version(self) -> int:
        """Return the schema version, 0 for a database without mailblast's tables."""
        row = self.db.execute("SELECT to_regclass('schema_version')").fetchone()
        if row is None or row[0] is None:
            return 0
        version = self.db.execute("SELECT version FROM schema_version").fetchone()
        return 0 if version is None else int(version[0])

    def upgrade(self, target: int | None = None) -> list[int]:
        """Apply pending migrations one transaction each, under a lock held against other hosts."""
        applied: list[int] = []
        while True:
            try:
                with self.db.transaction():
                    self.db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    steps = migrations.pending(self, "postgresql", target)
                    if not steps:
                        return applied
                    version, script = steps[0]
                    self.db.execute(script.encode())
                    self.db.execute("DELETE FROM schema_version")
                    self.db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
            except psycopg.Error as error:
                raise StoreError(f"migration failed in store {self.path}: {error}") from error
            applied.append(version)

    def catalog(self) -> dict[str, Any]:
        """Describe tables, columns and indexes, to compare a migrated store with a fresh one."""
        columns = self.db.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = self.db.execute(
            "SELECT tablename, indexname, replace(indexdef, current_schema() || '.', '')"
            " FROM pg_indexes"
            " WHERE schemaname = current_schema() ORDER BY tablename, indexname"
        ).fetchall()
        result: dict[str, Any] = {}
        for table, *column in columns:
            result.setdefault(table, {"columns": [], "indexes": []})["columns"].append(column)
        for table, *index in indexes:
            result.setdefault(table, {"columns": [], "indexes": []})["indexes"].append(index)
        return result
