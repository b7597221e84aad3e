"""The embedded SQLite store (WAL mode): one machine, any number of reading processes.

Every method is one transaction. ``busy_timeout`` lets a second process (``mailblast status``,
``mailblast pause``) wait for the sending process's short write transactions instead of failing.
The queries are shared with PostgreSQL in :mod:`mailblast.store.sql`.
"""

from __future__ import annotations

import math
import re
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mailblast.errors import StoreError
from mailblast.store import migrations
from mailblast.store.sql import SQLStore

BUSY_TIMEOUT_MS = 30_000
ADD_COLUMN = re.compile(r"^ALTER TABLE (\w+) ADD COLUMN (\w+)[^;]*;", re.MULTILINE)


def _add_floor(db: sqlite3.Connection) -> None:
    """Define floor() where SQLite was built without its math functions (before 3.35)."""
    try:
        db.execute("SELECT floor(0.5)")
    except sqlite3.OperationalError:
        db.create_function("floor", 1, math.floor, deterministic=True)


class SQLiteStore(SQLStore):
    """The Store interface on one SQLite file; opening it applies pending migrations."""

    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, read_only: bool = False, upgrade: bool = True) -> None:
        self.path = str(path)
        self.read_only = read_only
        try:
            if read_only:
                uri = f"file:{Path(self.path).resolve()}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _add_floor(self.db)
            if not read_only:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open store {self.path}: {error}") from error
        try:
            self._prepare(upgrade)
        except StoreError:
            self.db.close()
            raise

    def _prepare(self, upgrade: bool) -> None:
        """Migrate unless the caller does (mailblast db upgrade, tests), then check the version."""
        if not upgrade:
            return
        if not self.read_only:
            self.upgrade()
        migrations.check_version(self, "sqlite")

    def _transaction(self) -> AbstractContextManager[Any]:
        return self.db

    def schema_version(self) -> int:
        """Return the schema version, 0 for an empty database."""
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            return 0
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def upgrade(self, target: int | None = None) -> list[int]:
        """Apply the migrations after the current version, each in its own transaction."""
        applied = []
        for version, script in migrations.pending(self, "sqlite", target):
            script = ADD_COLUMN.sub(self._unless_present, script)
            try:
                self.db.executescript(
                    f"BEGIN;\n{script}\n;DELETE FROM schema_version;"
                    f" INSERT INTO schema_version VALUES ({version});\nCOMMIT;"
                )
            except sqlite3.Error as error:
                self.db.rollback()
                raise StoreError(
                    f"migration {version} failed in store {self.path}: {error}"
                ) from error
            applied.append(version)
        return applied

    def _unless_present(self, statement: re.Match[str]) -> str:
        """Drop an ADD COLUMN statement whose column the table already has.

        SQLite has no ADD COLUMN IF NOT EXISTS, and stores written by builds that added
        columns when opened (before versioned migrations) already have some at version 1.
        """
        table, column = statement.group(1), statement.group(2)
        present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        return "" if column in present else statement.group(0)

    def catalog(self) -> dict[str, Any]:
        """Describe tables, columns and indexes, to compare a migrated store with a fresh one."""
        tables = [
            row[0]
            for row in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        result: dict[str, Any] = {}
        for table in tables:
            columns = self.db.execute(f"PRAGMA table_info({table})").fetchall()
            indexes = self.db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
                " ORDER BY name",
                (table,),
            ).fetchall()
            result[table] = {"columns": columns, "indexes": indexes}
        return result
