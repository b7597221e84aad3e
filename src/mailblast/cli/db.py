"""The ``db`` command group: create or upgrade a store's schema."""

from __future__ import annotations

import argparse
from typing import Any

from mailblast.cli.status import add_store_option
from mailblast.store import open_store


def register(commands: Any) -> None:
    db = commands.add_parser(
        "db",
        help="create or upgrade a store's schema",
        description="Manage the schema of a store (a SQLite file or a PostgreSQL database).",
    )
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser(
        "upgrade",
        help="apply pending schema migrations",
        description="Apply the schema migrations the store has not had yet, one transaction"
        " each. Stop the workers of older mailblast versions first.",
    )
    add_store_option(upgrade)
    upgrade.set_defaults(handler=run_upgrade)


def run_upgrade(arguments: argparse.Namespace) -> int:
    with open_store(arguments.store, upgrade=False) as store:
        before = store.schema_version()
        applied = store.upgrade()
    if applied:
        steps = ", ".join(str(version) for version in applied)
        print(f"store {arguments.store}: schema upgraded from version {before} (applied {steps})")
    else:
        print(f"store {arguments.store}: schema is current (version {before})")
    return 0
