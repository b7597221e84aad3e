"""Versioned schema migrations, one directory per backend.

A migration is ``NNNN_name.sql`` under ``sqlite/`` or ``postgresql/``; both directories carry
the same versions, so a store of either backend at version N has the same tables, columns and
indexes. The single row of ``schema_version`` holds the last version applied.
"""

from __future__ import annotations

from importlib import resources
from typing import Protocol

from mailblast.errors import StoreError


class Migratable(Protocol):
    path: str

    def schema_version(self) -> int: ...


def scripts(backend: str) -> list[tuple[int, str]]:
    """Return (version, SQL) of every migration of the backend, in version order."""
    folder = resources.files("mailblast.store.migrations").joinpath(backend)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest(backend: str) -> int:
    return scripts(backend)[-1][0]


def pending(store: Migratable, backend: str, target: int | None = None) -> list[tuple[int, str]]:
    """Return the migrations a store still needs to reach ``target`` (default: the latest)."""
    current = store.schema_version()
    newest = latest(backend)
    if current > newest:
        raise StoreError(
            f"store {store.path} has schema version {current}, newer than this mailblast"
            f" ({newest}); upgrade mailblast"
        )
    goal = newest if target is None else target
    return [(version, sql) for version, sql in scripts(backend) if current < version <= goal]


def check_version(store: Migratable, backend: str) -> None:
    """Raise unless the store's schema is the one this version of mailblast uses."""
    current = store.schema_version()
    newest = latest(backend)
    if current > newest:
        pending(store, backend)
    if current < newest:
        raise StoreError(
            f"store {store.path} has schema version {current}, older than this mailblast"
            f" ({newest}); run 'mailblast db upgrade --store {store.path}' first"
        )
