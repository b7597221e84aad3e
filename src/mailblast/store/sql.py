"""Store methods whose SQL is the same on SQLite and PostgreSQL.

Queries are written once with ``?`` placeholders; a backend translates them to its driver's
style (:meth:`SQLStore._sql`) and supplies the connection, the transaction and the error types.
Both drivers return plain tuples, so rows map the same way on both. Methods a backend must
write differently (claiming, opening, migrating) live in the backend's own module.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Self

from mailblast.compose import message_id_for
from mailblast.errors import StoreError
from mailblast.store.base import (
    PROBLEM_TYPES,
    SESSION_COMMANDS,
    AttemptSpan,
    BounceEvent,
    CampaignRow,
    ClaimedMessage,
    DeferredMessage,
    LoadChunkResult,
    LoadRow,
    LogRecord,
    MessageRef,
    Outcome,
    Reason,
    RecoveryResult,
    RelayActivity,
    ReplyGroup,
    Suppression,
)

LOG_INSERT = (
    "INSERT INTO delivery_log (time, campaign_id, message, message_id, recipient, type, relay,"
    " attempt, command, code, status, text, duration, line)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
RECORD_COLUMNS = (
    "type, time, message, message_id, recipient, relay, attempt, command, code, status, text,"
    " duration, line"
)
PROBLEM_MARKS = ", ".join("?" * len(PROBLEM_TYPES))
SESSION_LIST = ", ".join(f"'{command}'" for command in SESSION_COMMANDS)
MESSAGE_REF_COLUMNS = "id, campaign_id, address, key, state"
SUPPRESSION_INSERT = (
    "INSERT INTO suppressions (key, campaign_id, address, reason, origin, time)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, campaign_id) DO NOTHING"
)
# The report's and metrics' attempt records: delivery records with an SMTP command.
ATTEMPTS = "campaign_id = ? AND command IS NOT NULL"
BUCKET = "floor((time - ?) / ?)"
CAMPAIGN_COLUMNS = (
    "id, name, settings, status, status_reason, created_at, started_at, finished_at, loaded_at,"
    " load_line, rows_read, rows_rejected, rows_duplicate, rows_suppressed"
)
UNLIMITED = 2**62  # a daily quota no relay reaches, so that one query serves both cases
CLAIM = (
    "UPDATE messages SET state = 'sending', lease_owner = ?, lease_until = ?"
    " WHERE id IN (SELECT id FROM messages WHERE campaign_id = ?"
    " AND state IN ('queued', 'deferred') AND due_at <= ?"
    " ORDER BY due_at, id LIMIT ?{lock})"
    " RETURNING id, line, address, key, smtputf8, fields, attempts, first_attempt_at"
)


def log_values(campaign_id: int, record: LogRecord) -> tuple[Any, ...]:
    return (
        record.time,
        campaign_id,
        record.message,
        record.message_id,
        record.recipient,
        record.type,
        record.relay,
        record.attempt,
        record.command,
        record.code,
        record.status,
        record.text,
        record.duration,
        record.line,
    )


def _message_id(campaign_name: str, settings: str, key: str) -> str | None:
    """Return the Message-ID of the campaign's message for ``key``; None without a From address.

    Message-IDs are not stored, so this derives it from the From domain as the Composer does.
    """
    from_address = json.loads(settings).get("from_address")
    if not from_address:
        return None
    return message_id_for(campaign_name, key, str(from_address).rpartition("@")[2].lower())


def _load_record(campaign_id: int, row: LoadRow, text: str, kind: str) -> tuple[Any, ...]:
    record = LogRecord(type=kind, time=time.time(), recipient=row.address, text=text, line=row.line)
    return log_values(campaign_id, record)


def _campaign(row: tuple[Any, ...]) -> CampaignRow:
    values = list(row)
    values[2] = json.loads(values[2])
    return CampaignRow(*values)


def _suppression_filter(campaign_id: int | None, reason: str | None) -> tuple[str, list[Any]]:
    """Return the WHERE condition on suppressions (alias s) and its values."""
    conditions = ["1 = 1"]
    values: list[Any] = []
    if campaign_id is not None:
        conditions.append("s.campaign_id = ?")
        values.append(campaign_id)
    if reason is not None:
        conditions.append("s.reason = ?")
        values.append(reason)
    return " AND ".join(conditions), values


class SQLStore:
    """The Store interface in SQL shared by the backends; subclasses open the connection.

    ``path`` names the store in messages (a file path, or a URL without a password).
    ``claim_lock`` is appended to the claim's inner SELECT: PostgreSQL locks the rows it
    claims and skips rows another worker is claiming, SQLite has one writer at a time.
    """

    path: str
    db: Any
    errors: tuple[type[Exception], ...] = ()
    claim_lock = ""
    # SQL for the recipient's domain. SQLite has instr() and PostgreSQL strpos(), so each
    # backend sets its own.
    domain_of_address = "lower(substr(address, instr(address, '@') + 1))"
    shared = False  # True when workers on several machines may use the store at once

    def _sql(self, text: str) -> str:
        """Return the query in the driver's placeholder style."""
        return text

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def upgrade(self, target: int | None = None) -> list[int]:
        raise NotImplementedError

    def catalog(self) -> dict[str, Any]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.db.cursor()
        cursor.execute(self._sql(sql), params)
        return cursor

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cursor = self.db.cursor()
        if rows:
            cursor.executemany(self._sql(sql), rows)
        return cursor

    def _write(self, operation: str, function: Any, *args: Any) -> Any:
        """Run function in one transaction; raise driver failures as StoreError naming the store."""
        try:
            with self._transaction():
                return function(*args)
        except self.errors as error:
            raise StoreError(f"{operation} failed in store {self.path}: {error}") from error

    def _write_soon(self, operation: str, function: Any, *args: Any) -> Any:
        """Like _write, for bookkeeping whose loss in a database crash does no harm.

        A backend may return before the commit is on disk (PostgreSQL's asynchronous commit).
        """
        return self._write(operation, function, *args)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Campaigns

    def upsert_campaign(self, name: str, settings: dict[str, Any], now: float) -> CampaignRow:
        def run() -> None:
            self._execute(
                "INSERT INTO campaigns (name, settings, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                (name, json.dumps(settings), now),
            )

        self._write("saving the campaign", run)
        row = self.get_campaign(name)
        assert row is not None
        return row

    def get_campaign(self, name: str) -> CampaignRow | None:
        row = self._execute(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = ?", (name,)
        ).fetchone()
        return _campaign(row) if row else None

    def list_campaigns(self) -> list[CampaignRow]:
        rows = self._execute(f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY id").fetchall()
        return [_campaign(row) for row in rows]

    def set_status(self, campaign_id: int, status: str, reason: str | None, now: float) -> None:
        finished = now if status in ("done", "cancelled") else None
        self._write(
            "updating the campaign status",
            self._execute,
            "UPDATE campaigns SET status = ?, status_reason = ?,"
            " finished_at = COALESCE(?, finished_at) WHERE id = ?",
            (status, reason, finished, campaign_id),
        )

    def mark_started(self, campaign_id: int, now: float) -> None:
        self._write(
            "marking the campaign started",
            self._execute,
            "UPDATE campaigns SET started_at = COALESCE(started_at, ?) WHERE id = ?",
            (now, campaign_id),
        )

    # Loading

    def load_chunk(
        self,
        campaign_id: int,
        rows: Sequence[LoadRow],
        rejected: Sequence[LogRecord],
        last_line: int,
        rows_read: int,
    ) -> LoadChunkResult:
        return self._write(
            "queueing recipients",
            self._load_chunk,
            campaign_id,
            rows,
            rejected,
            last_line,
            rows_read,
        )

    def _load_chunk(
        self,
        campaign_id: int,
        rows: Sequence[LoadRow],
        rejected: Sequence[LogRecord],
        last_line: int,
        rows_read: int,
    ) -> LoadChunkResult:
        result = LoadChunkResult()
        log: list[tuple[Any, ...]] = [log_values(campaign_id, record) for record in rejected]
        for row in rows:
            if self.is_suppressed(campaign_id, row.key):
                result.suppressed.append(row)
                continue
            cursor = self._execute(
                "INSERT INTO messages (campaign_id, line, address, key, smtputf8, fields)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (campaign_id, key) DO NOTHING",
                (campaign_id, row.line, row.address, row.key, int(row.smtputf8), row.fields),
            )
            if cursor.rowcount == 1:
                result.queued += 1
                continue
            first = self._execute(
                "SELECT line FROM messages WHERE campaign_id = ? AND key = ?",
                (campaign_id, row.key),
            ).fetchone()
            result.duplicates.append((row, first[0]))
        log.extend(
            _load_record(campaign_id, row, f"duplicate of line {first}", "rejected")
            for row, first in result.duplicates
        )
        log.extend(
            _load_record(campaign_id, row, "on the suppression list", "suppressed")
            for row in result.suppressed
        )
        self._executemany(LOG_INSERT, log)
        self._execute(
            "UPDATE campaigns SET load_line = ?, rows_read = ?,"
            " rows_rejected = rows_rejected + ?, rows_duplicate = rows_duplicate + ?,"
            " rows_suppressed = rows_suppressed + ? WHERE id = ?",
            (
                last_line,
                rows_read,
                len(rejected),
                len(result.duplicates),
                len(result.suppressed),
                campaign_id,
            ),
        )
        return result

    def finish_load(self, campaign_id: int, now: float) -> None:
        self._write(
            "finishing the load",
            self._execute,
            "UPDATE campaigns SET loaded_at = ? WHERE id = ?",
            (now, campaign_id),
        )

    # Sending

    def claim(
        self, campaign_id: int, owner: str, now: float, lease_until: float, limit: int
    ) -> list[ClaimedMessage]:
        def run() -> list[ClaimedMessage]:
            rows = self._execute(
                CLAIM.format(lock=self.claim_lock),
                (owner, lease_until, campaign_id, now, limit),
            ).fetchall()
            claimed = sorted((ClaimedMessage(*row) for row in rows), key=lambda m: m.id)
            # A separate query, because SQLite 3.40 scans the whole suppression list for a
            # subquery in RETURNING instead of using its primary key.
            suppressed = self._suppressed_keys(campaign_id, [m.key for m in claimed])
            for message in claimed:
                message.suppressed = message.key in suppressed
            return claimed

        result: list[ClaimedMessage] = self._write("claiming messages", run)
        return result

    def renew_lease(self, campaign_id: int, owner: str, lease_until: float) -> None:
        """Extend the lease on the run's claimed messages and on its relay connection slots."""

        def run() -> None:
            self._execute(
                "UPDATE messages SET lease_until = ? WHERE campaign_id = ? AND lease_owner = ?"
                " AND state = 'sending'",
                (lease_until, campaign_id, owner),
            )
            self._execute(
                "UPDATE relay_slots SET lease_until = ? WHERE campaign_id = ? AND owner = ?",
                (lease_until, campaign_id, owner),
            )

        self._write("renewing the lease", run)

    def commit_group(
        self,
        campaign_id: int,
        in_flight: Sequence[int],
        outcomes: Sequence[Outcome],
        records: Sequence[LogRecord] = (),
        owner: str | None = None,
    ) -> list[int]:
        """Write in-flight marks, outcomes and log records in one transaction.

        With ``owner``, a message is marked in flight only while that run holds its lease.
        Returns the messages whose mark was refused: another run took them over after the
        lease expired, so their final dot must not be sent.
        """
        lost: list[int] = []

        def run() -> None:
            if in_flight and owner is None:
                self._executemany(
                    "UPDATE messages SET in_flight = 1 WHERE id = ?", [(i,) for i in in_flight]
                )
            elif in_flight:
                marks = ",".join("?" * len(in_flight))
                marked = self._execute(
                    f"UPDATE messages SET in_flight = 1 WHERE id IN ({marks})"
                    " AND lease_owner = ? AND state = 'sending' RETURNING id",
                    (*in_flight, owner),
                ).fetchall()
                marked_ids = {row[0] for row in marked}
                lost.extend(i for i in in_flight if i not in marked_ids)
            self._executemany(
                "UPDATE messages SET state = ?, attempts = ?, due_at = ?, first_attempt_at = ?,"
                " in_flight = 0, lease_owner = NULL, lease_until = NULL, relay = ?,"
                " last_code = ?, last_status = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                [
                    (
                        o.state,
                        o.attempts,
                        o.due_at,
                        o.first_attempt_at,
                        o.record.relay,
                        o.record.code,
                        o.record.status,
                        o.record.text,
                        o.record.time,
                        o.message,
                    )
                    for o in outcomes
                ],
            )
            log = [log_values(campaign_id, o.record) for o in outcomes]
            log.extend(log_values(campaign_id, record) for record in records)
            self._executemany(LOG_INSERT, log)

        self._write("recording outcomes", run)
        return lost

    def release(self, campaign_id: int, owner: str, ids: Sequence[int]) -> None:
        """Return claimed messages that were never attempted to the queue (clean stop)."""
        self._write(
            "releasing claimed messages",
            self._executemany,
            "UPDATE messages SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND campaign_id = ? AND lease_owner = ? AND state = 'sending'"
            " AND in_flight = 0",
            [(i, campaign_id, owner) for i in ids],
        )

    def recover(self, campaign_id: int, dead_owners: Sequence[str], now: float) -> RecoveryResult:
        """Take back messages of runs that are gone, or whose lease expired.

        A message marked in flight may have been accepted by a relay: it becomes ``unknown``.
        Any other claimed message was never handed to a relay past MAIL/RCPT, so it is requeued.
        """

        def run() -> RecoveryResult:
            owners = list(dead_owners)
            marks = ",".join("?" * len(owners)) or "NULL"
            condition = (
                f"campaign_id = ? AND state = 'sending' AND (lease_owner IN ({marks})"
                " OR lease_until < ? OR lease_owner IS NULL)"
            )
            params = (campaign_id, *owners, now)
            unknown = self._execute(
                f"UPDATE messages SET state = 'unknown', lease_owner = NULL, lease_until = NULL,"
                f" updated_at = ? WHERE {condition} AND in_flight = 1"
                " RETURNING id, address, attempts, relay",
                (now, *params),
            ).fetchall()
            requeued = self._execute(
                f"UPDATE messages SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE"
                f" 'queued' END, lease_owner = NULL, lease_until = NULL WHERE {condition}",
                params,
            ).rowcount
            self._executemany(
                LOG_INSERT,
                [
                    log_values(
                        campaign_id,
                        LogRecord(
                            type="unknown",
                            time=now,
                            message=row[0],
                            recipient=row[1],
                            attempt=row[2] + 1,
                            relay=row[3],
                            command="end-of-data",
                            text="the sending run stopped after the end of DATA and before the"
                            " reply was recorded; outcome unknown",
                        ),
                    )
                    for row in unknown
                ],
            )
            if owners:
                self._executemany("DELETE FROM runs WHERE id = ?", [(o,) for o in owners])
            return RecoveryResult(requeued=requeued, unknown=len(unknown))

        result: RecoveryResult = self._write("recovering claimed messages", run)
        return result

    def retry_unknown(self, campaign_id: int, now: float) -> int:
        return int(
            self._write(
                "requeueing unknown messages",
                lambda: (
                    self._execute(
                        "UPDATE messages SET state = 'deferred', due_at = ? WHERE campaign_id = ?"
                        " AND state = 'unknown'",
                        (now, campaign_id),
                    ).rowcount
                ),
            )
        )

    def cancel_remaining(self, campaign_id: int, now: float) -> int:
        return int(
            self._write(
                "cancelling messages",
                lambda: (
                    self._execute(
                        "UPDATE messages SET state = 'cancelled', updated_at = ?"
                        " WHERE campaign_id = ? AND state IN ('queued', 'deferred')",
                        (now, campaign_id),
                    ).rowcount
                ),
            )
        )

    # Reading

    def counts(self, campaign_id: int) -> dict[str, int]:
        rows = self._execute(
            "SELECT state, count(*) FROM messages WHERE campaign_id = ? GROUP BY state",
            (campaign_id,),
        ).fetchall()
        return {state: count for state, count in rows}

    def next_due(self, campaign_id: int) -> float | None:
        row = self._execute(
            "SELECT min(due_at) FROM messages WHERE campaign_id = ?"
            " AND state IN ('queued', 'deferred')",
            (campaign_id,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def is_suppressed(self, campaign_id: int, key: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM suppressions WHERE key = ? AND campaign_id IN (0, ?) LIMIT 1",
            (key, campaign_id),
        ).fetchone()
        return row is not None

    # Suppression list

    def add_suppression(
        self,
        key: str,
        address: str,
        reason: str,
        campaign_id: int,
        now: float,
        origin: str | None = None,
        record: LogRecord | None = None,
    ) -> bool:
        def run() -> bool:
            values = (key, campaign_id, address, reason, origin, now)
            if self._execute(SUPPRESSION_INSERT, values).rowcount == 0:
                return False
            if record is not None and origin is not None:
                self._log_for_campaign(origin, key, record)
            return True

        added: bool = self._write("adding a suppression", run)
        return added

    def _log_for_campaign(self, name: str, key: str, record: LogRecord) -> None:
        """Append a record to a campaign's log, tied to its message for that key if any."""
        campaign = self._execute(
            "SELECT id, settings FROM campaigns WHERE name = ?", (name,)
        ).fetchone()
        if campaign is None:
            return
        message = self._execute(
            "SELECT id, line FROM messages WHERE campaign_id = ? AND key = ?", (campaign[0], key)
        ).fetchone()
        if message is not None:
            record.message, record.line = message
            record.message_id = record.message_id or _message_id(name, campaign[1], key)
        self._execute(LOG_INSERT, log_values(campaign[0], record))

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        values = [(e.key, e.campaign_id, e.address, e.reason, e.origin, e.time) for e in entries]
        return self._write_counted("adding suppressions", SUPPRESSION_INSERT, values)

    def _write_counted(self, operation: str, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row in one transaction; return the rows changed in total."""
        if not rows:
            return 0  # a cursor that ran nothing reports -1
        cursor = self._write(operation, self._executemany, sql, rows)
        return int(cursor.rowcount)

    def remove_suppressions(
        self, campaign_id: int, keys: Sequence[str] | None = None, reason: str | None = None
    ) -> int:
        condition = "campaign_id = ?" + (" AND reason = ?" if reason else "")
        scope = (campaign_id, reason) if reason else (campaign_id,)
        if keys is None:
            statement = f"DELETE FROM suppressions WHERE {condition}"
            cursor = self._write("removing suppressions", self._execute, statement, scope)
            return int(cursor.rowcount)
        statement = f"DELETE FROM suppressions WHERE key = ? AND {condition}"
        values = [(key, *scope) for key in keys]
        return self._write_counted("removing suppressions", statement, values)

    def count_suppressions(self, campaign_id: int | None = None, reason: str | None = None) -> int:
        condition, values = _suppression_filter(campaign_id, reason)
        row = self._execute(f"SELECT count(*) FROM suppressions s WHERE {condition}", values)
        return int(row.fetchone()[0])

    def list_suppressions(
        self,
        campaign_id: int | None = None,
        reason: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 1000,
    ) -> list[Suppression]:
        condition, values = _suppression_filter(campaign_id, reason)
        if after is not None:
            condition += " AND (s.key, s.campaign_id) > (?, ?)"
            values.extend(after)
        rows = self._execute(
            "SELECT s.key, s.address, s.reason, s.campaign_id, s.origin, s.time, c.name"
            " FROM suppressions s LEFT JOIN campaigns c ON c.id = s.campaign_id"
            f" WHERE {condition} ORDER BY s.key, s.campaign_id LIMIT ?",
            (*values, limit),
        ).fetchall()
        return [Suppression(*row) for row in rows]

    def _suppressed_keys(self, campaign_id: int, keys: Sequence[str]) -> set[str]:
        """Return which of the keys are suppressed for the campaign, querying 500 keys at a time."""
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._execute(
                f"SELECT key FROM suppressions WHERE key IN ({marks}) AND campaign_id IN (0, ?)",
                (*part, campaign_id),
            )
            found.update(row[0] for row in rows)
        return found

    def suppressed_claims(self, campaign_id: int, owner: str) -> list[int]:
        rows = self._execute(
            "SELECT m.id FROM messages m WHERE m.campaign_id = ? AND m.state = 'sending'"
            " AND m.lease_owner = ? AND EXISTS (SELECT 1 FROM suppressions s"
            " WHERE s.key = m.key AND s.campaign_id IN (0, ?)) ORDER BY m.id",
            (campaign_id, owner, campaign_id),
        ).fetchall()
        return [row[0] for row in rows]

    def iter_log(self, campaign_id: int) -> Iterator[dict[str, Any]]:
        name_row = self._execute("SELECT name FROM campaigns WHERE id = ?", (campaign_id,))
        name = name_row.fetchone()[0]
        last_id = 0
        while True:
            rows = self._execute(
                "SELECT id, time, message_id, recipient, type, relay, attempt, command, code,"
                " status, text, duration, line FROM delivery_log"
                " WHERE campaign_id = ? AND id > ? ORDER BY id LIMIT 5000",
                (campaign_id, last_id),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                last_id = row[0]
                yield {
                    "time": row[1],
                    "campaign": name,
                    "message_id": row[2],
                    "recipient": row[3],
                    "type": row[4],
                    "relay": row[5],
                    "attempt": row[6],
                    "command": row[7],
                    "code": row[8],
                    "status": row[9],
                    "text": row[10],
                    "duration": row[11],
                    "line": row[12],
                }

    def relay_totals(self, campaign_id: int) -> dict[str, dict[str, Any]]:
        rows = self._execute(
            "SELECT relay, type, count(*), min(time), max(time) FROM delivery_log"
            " WHERE campaign_id = ? AND relay IS NOT NULL GROUP BY relay, type",
            (campaign_id,),
        ).fetchall()
        totals: dict[str, dict[str, Any]] = {}
        for relay, kind, count, first, last in rows:
            entry = totals.setdefault(relay, {"first": first, "last": last})
            entry[kind] = count
            entry["first"] = min(entry["first"], first)
            entry["last"] = max(entry["last"], last)
        return totals

    def message_states(
        self, campaign_id: int, state: str, limit: int = 100
    ) -> list[tuple[Any, ...]]:
        return self._execute(
            "SELECT id, address, line, attempts, relay, last_code, last_status, last_reply"
            " FROM messages WHERE campaign_id = ? AND state = ? ORDER BY id LIMIT ?",
            (campaign_id, state, limit),
        ).fetchall()

    # Dashboard queries

    def relay_activity(self, campaign_id: int, since: float) -> list[RelayActivity]:
        rows = self._execute(
            "SELECT relay, type,"
            f" CASE WHEN command IN ({SESSION_LIST}) THEN 1 ELSE 0 END, count(*), max(time)"
            f" FROM delivery_log WHERE campaign_id = ? AND type IN ('sent', {PROBLEM_MARKS})"
            " AND time >= ? AND relay IS NOT NULL GROUP BY 1, 2, 3",
            (campaign_id, *PROBLEM_TYPES, since),
        ).fetchall()
        return [RelayActivity(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def last_problems(self, campaign_id: int, limit: int) -> list[LogRecord]:
        # One index range per type, newest first, rather than sorting every problem record.
        records: list[LogRecord] = []
        for kind in PROBLEM_TYPES:
            rows = self._execute(
                f"SELECT {RECORD_COLUMNS} FROM delivery_log WHERE campaign_id = ? AND type = ?"
                " ORDER BY time DESC LIMIT ?",
                (campaign_id, kind, limit),
            ).fetchall()
            records.extend(LogRecord(*row) for row in rows)
        records.sort(key=lambda record: record.time, reverse=True)
        return records[:limit]

    def relay_last_problems(self, campaign_id: int, since: float) -> dict[str, LogRecord]:
        # An aggregate finds each relay's newest time, then one index lookup per relay reads its
        # record. This is cheaper than ranking every problem record of the window.
        latest = self._execute(
            "SELECT relay, max(time) FROM delivery_log WHERE campaign_id = ?"
            f" AND type IN ({PROBLEM_MARKS}) AND time >= ? AND relay IS NOT NULL GROUP BY relay",
            (campaign_id, *PROBLEM_TYPES, since),
        ).fetchall()
        records: dict[str, LogRecord] = {}
        for relay, newest in latest:
            row = self._execute(
                f"SELECT {RECORD_COLUMNS} FROM delivery_log WHERE campaign_id = ?"
                f" AND type IN ({PROBLEM_MARKS}) AND time = ? AND relay = ? LIMIT 1",
                (campaign_id, *PROBLEM_TYPES, newest, relay),
            ).fetchone()
            records[relay] = LogRecord(*row)
        return records

    def deferred_due_counts(self, campaign_id: int, bounds: Sequence[float]) -> list[int]:
        """Count deferred messages due by each bound (ascending) and after the last one."""
        cumulative = " ".join("sum(CASE WHEN due_at <= ? THEN 1 ELSE 0 END)," for _ in bounds)
        row = self._execute(
            f"SELECT {cumulative} count(*) FROM messages WHERE campaign_id = ?"
            " AND state = 'deferred'",
            (*bounds, campaign_id),
        ).fetchone()
        totals = [value or 0 for value in row]
        return [totals[0], *(b - a for a, b in itertools.pairwise(totals))]

    def next_deferred(self, campaign_id: int, limit: int) -> list[DeferredMessage]:
        rows = self._execute(
            "SELECT id, line, address, attempts, due_at, relay, last_code, last_status, last_reply"
            " FROM messages WHERE campaign_id = ? AND state = 'deferred' ORDER BY due_at LIMIT ?",
            (campaign_id, limit),
        ).fetchall()
        return [DeferredMessage(*row) for row in rows]

    # Bounce processing

    def find_message(self, message: int) -> MessageRef | None:
        row = self._execute(
            f"SELECT {MESSAGE_REF_COLUMNS} FROM messages WHERE id = ?", (message,)
        ).fetchone()
        return MessageRef(*row) if row else None

    def find_messages_by_key(self, key: str) -> list[MessageRef]:
        """Return the messages to one address key in every campaign, the newest first."""
        # The campaign_id IN (...) term lets the (campaign_id, key) unique index serve the
        # lookup, so no index on key alone is needed.
        rows = self._execute(
            f"SELECT {MESSAGE_REF_COLUMNS} FROM messages"
            " WHERE campaign_id IN (SELECT id FROM campaigns) AND key = ? ORDER BY id DESC",
            (key,),
        ).fetchall()
        return [MessageRef(*row) for row in rows]

    def count_soft_bounces(self, key: str) -> int:
        row = self._execute(
            "SELECT count(*) FROM bounces WHERE key = ? AND class = 'soft'", (key,)
        ).fetchone()
        return int(row[0])

    def bounce_recorded(self, bounce_id: str) -> bool:
        row = self._execute("SELECT 1 FROM bounces WHERE id = ?", (bounce_id,)).fetchone()
        return row is not None

    def record_bounce(self, event: BounceEvent) -> bool:
        """Record one bounce event; return False when it was recorded before."""

        def run() -> bool:
            inserted = self._execute(
                "INSERT INTO bounces (id, key, class, campaign_id, message, time)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    event.id,
                    event.key,
                    event.bounce_class,
                    event.campaign_id,
                    event.record.message,
                    event.record.time,
                ),
            ).rowcount
            if inserted == 0:
                return False
            self._execute(LOG_INSERT, log_values(event.campaign_id, event.record))
            if event.mark_bounced and event.record.message is not None:
                self._execute(
                    "UPDATE messages SET state = 'bounced', updated_at = ?"
                    " WHERE id = ? AND state = 'sent'",
                    (event.record.time, event.record.message),
                )
            return True

        recorded: bool = self._write("recording a bounce", run)
        return recorded

    # Reports and metrics

    def attempt_span(self, campaign_id: int) -> AttemptSpan:
        row = self._execute(
            "SELECT min(time), max(time), count(*),"
            " coalesce(sum(CASE WHEN type = 'sent' THEN 1 ELSE 0 END), 0)"
            f" FROM delivery_log WHERE {ATTEMPTS}",
            (campaign_id,),
        ).fetchone()
        return AttemptSpan(*row)

    def sent_timeline(
        self, campaign_id: int, start: float, bucket: float
    ) -> list[tuple[int, str | None, int]]:
        """Return (bucket number, relay, sent records) for each bucket of ``bucket`` seconds."""
        rows = self._execute(
            f"SELECT {BUCKET} AS b, relay, count(*) FROM delivery_log"
            f" WHERE {ATTEMPTS} AND type = 'sent' GROUP BY b, relay ORDER BY b, relay",
            (start, bucket, campaign_id),
        ).fetchall()
        return [(int(b), relay, count) for b, relay, count in rows]

    def reply_timeline(
        self, campaign_id: int, start: float, bucket: float
    ) -> list[tuple[int, ReplyGroup]]:
        """Return the attempt records grouped by reply, per bucket of ``bucket`` seconds."""
        rows = self._execute(
            f"SELECT {BUCKET} AS b, type, command, code, status, count(*), min(text)"
            f" FROM delivery_log WHERE {ATTEMPTS} GROUP BY b, type, command, code, status"
            " ORDER BY b",
            (start, bucket, campaign_id),
        ).fetchall()
        return [(int(row[0]), ReplyGroup(*row[1:])) for row in rows]

    def reply_groups(self, campaign_id: int) -> list[tuple[str | None, ReplyGroup]]:
        """Return the attempt records grouped by relay and reply."""
        rows = self._execute(
            "SELECT relay, type, command, code, status, count(*), min(text) FROM delivery_log"
            f" WHERE {ATTEMPTS} GROUP BY relay, type, command, code, status",
            (campaign_id,),
        ).fetchall()
        return [(row[0], ReplyGroup(*row[1:])) for row in rows]

    def top_reasons(self, campaign_id: int, kind: str, limit: int) -> list[Reason]:
        """Return the most frequent replies among the attempt records of type ``kind``."""
        rows = self._execute(
            "SELECT command, code, status, count(*) AS n, min(text), min(relay) FROM delivery_log"
            f" WHERE {ATTEMPTS} AND type = ? GROUP BY command, code, status"
            " ORDER BY n DESC, command, code, status LIMIT ?",
            (campaign_id, kind, limit),
        ).fetchall()
        return [Reason(*row) for row in rows]

    def domain_outcomes(self, campaign_id: int, limit: int) -> list[tuple[str, str, int]]:
        """Return (domain, state, messages) for the ``limit`` domains with the most messages."""
        return self._execute(
            f"WITH m AS (SELECT {self.domain_of_address} AS domain, state FROM messages"
            " WHERE campaign_id = ?),"
            " top AS (SELECT domain, count(*) AS n FROM m GROUP BY domain"
            " ORDER BY n DESC, domain LIMIT ?)"
            " SELECT m.domain, m.state, count(*) FROM m JOIN top ON m.domain = top.domain"
            " GROUP BY m.domain, m.state, top.n ORDER BY top.n DESC, m.domain, m.state",
            (campaign_id, limit),
        ).fetchall()

    def duration_histogram(
        self, campaign_id: int, bounds: Sequence[float]
    ) -> tuple[list[int], float, int]:
        """Return the cumulative count of attempts at or under each bound, the sum and count."""
        buckets = "".join(
            " coalesce(sum(CASE WHEN duration <= ? THEN 1 ELSE 0 END), 0)," for _ in bounds
        )
        row = self._execute(
            f"SELECT{buckets} coalesce(sum(duration), 0), count(duration) FROM delivery_log"
            f" WHERE {ATTEMPTS}",
            (*bounds, campaign_id),
        ).fetchone()
        return list(row[: len(bounds)]), float(row[-2]), row[-1]

    # Runs

    def register_run(self, run_id: str, campaign_id: int, host: str, pid: int, now: float) -> None:
        self._write(
            "registering the run",
            self._execute,
            "INSERT INTO runs (id, campaign_id, host, pid, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " campaign_id = excluded.campaign_id, host = excluded.host, pid = excluded.pid,"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
            (run_id, campaign_id, host, pid, now, now),
        )

    def heartbeat(self, run_id: str, now: float, sent: int | None = None) -> None:
        """Record that the run is alive and, when given, how many messages it has sent."""
        self._write_soon(
            "updating the heartbeat",
            self._execute,
            "UPDATE runs SET heartbeat_at = ?, sent = COALESCE(?, sent) WHERE id = ?",
            (now, sent, run_id),
        )

    def remove_run(self, run_id: str) -> None:
        self._write("removing the run", self._execute, "DELETE FROM runs WHERE id = ?", (run_id,))

    def runs(self, campaign_id: int) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT id, host, pid, started_at, heartbeat_at, sent FROM runs WHERE campaign_id = ?"
            " ORDER BY started_at, id",
            (campaign_id,),
        ).fetchall()
        keys = ("id", "host", "pid", "started_at", "heartbeat_at", "sent")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def lease_owners(self, campaign_id: int) -> list[str]:
        rows = self._execute(
            "SELECT DISTINCT lease_owner FROM messages WHERE campaign_id = ? AND state = 'sending'"
            " AND lease_owner IS NOT NULL",
            (campaign_id,),
        ).fetchall()
        return [row[0] for row in rows]

    # Relay limits shared by every run of a campaign

    def prepare_relays(self, campaign_id: int, relays: Sequence[tuple[str, int]]) -> None:
        """Create each relay's connection slots (``max_connections`` rows) and budget row."""

        def run() -> None:
            for name, slots in relays:
                self._executemany(
                    "INSERT INTO relay_slots (campaign_id, relay, slot) VALUES (?, ?, ?)"
                    " ON CONFLICT (campaign_id, relay, slot) DO NOTHING",
                    [(campaign_id, name, slot) for slot in range(slots)],
                )
                self._execute(
                    "DELETE FROM relay_slots WHERE campaign_id = ? AND relay = ? AND slot >= ?",
                    (campaign_id, name, slots),
                )
                self._execute(
                    "INSERT INTO relay_budget (campaign_id, relay) VALUES (?, ?)"
                    " ON CONFLICT (campaign_id, relay) DO NOTHING",
                    (campaign_id, name),
                )

        self._write("preparing the relay limits", run)

    def acquire_slot(
        self, campaign_id: int, relay: str, owner: str, now: float, lease_until: float
    ) -> int | None:
        """Take a free connection slot of the relay (or one whose lease expired); None if none."""

        def run() -> int | None:
            row = self._execute(
                "UPDATE relay_slots SET owner = ?, lease_until = ? WHERE campaign_id = ?"
                " AND relay = ? AND slot = (SELECT slot FROM relay_slots WHERE campaign_id = ?"
                " AND relay = ? AND (owner IS NULL OR lease_until < ?) ORDER BY slot LIMIT 1"
                f"{self.claim_lock}) RETURNING slot",
                (owner, lease_until, campaign_id, relay, campaign_id, relay, now),
            ).fetchone()
            return None if row is None else int(row[0])

        result: int | None = self._write_soon("taking a connection slot", run)
        return result

    def release_slot(self, campaign_id: int, relay: str, slot: int, owner: str) -> None:
        self._write_soon(
            "releasing a connection slot",
            self._execute,
            "UPDATE relay_slots SET owner = NULL, lease_until = NULL WHERE campaign_id = ?"
            " AND relay = ? AND slot = ? AND owner = ?",
            (campaign_id, relay, slot, owner),
        )

    def release_slots(self, campaign_id: int, owner: str) -> None:
        self._write_soon(
            "releasing connection slots",
            self._execute,
            "UPDATE relay_slots SET owner = NULL, lease_until = NULL WHERE campaign_id = ?"
            " AND owner = ?",
            (campaign_id, owner),
        )

    def take_send_budget(
        self,
        campaign_id: int,
        relay: str,
        now: float,
        interval: float,
        quota: int | None,
        day: str,
    ) -> float | None:
        """Count one message against the relay's rate and daily quota.

        Returns the time the message may be sent (``interval`` seconds after the previous one
        of any run, and not before ``now``), or None when ``quota`` messages were already
        counted on ``day``.
        """

        def run() -> float | None:
            row = self._execute(
                "UPDATE relay_budget SET"
                " sent_today = CASE WHEN day = ? THEN sent_today + 1 ELSE 1 END, day = ?,"
                " next_at = CASE WHEN next_at > ? THEN next_at ELSE ? END + ?"
                " WHERE campaign_id = ? AND relay = ? AND (day <> ? OR sent_today < ?)"
                " RETURNING next_at",
                (day, day, now, now, interval, campaign_id, relay, day, quota or UNLIMITED),
            ).fetchone()
            return None if row is None else float(row[0]) - interval

        result: float | None = self._write_soon("counting a message against the relay limits", run)
        return result
