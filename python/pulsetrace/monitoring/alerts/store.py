"""Alert state in SQLite (WAL mode), shared by every process of the
application and surviving restarts and crashes.

The rule that makes escalation exactly-once per step, whatever crashes:

1. A step is *decided* in one transaction that moves the alert's ``step``
   from ``k-1`` to ``k`` only while it is still ``firing`` (a compare and
   set: ``UPDATE ... WHERE state='firing' AND step=k-1``) and inserts one
   ``pending`` delivery row per channel of the step. An acknowledgement
   commits ``state='acknowledged'`` in its own transaction before its HTTP
   answer; the two serialize in SQLite, so a step is either decided before
   the acknowledgement (and sent) or never.
2. Deliveries are *sent* after that commit, from the rows: each is marked
   ``sent`` or ``failed`` after its attempt. A restart re-queues the rows
   still ``pending`` (never decides the step again), so a step is never
   sent twice; the one delivery in flight at a crash may be repeated, and
   carries a stable key (``X-Pulsetrace-Delivery``, PagerDuty's
   ``dedup_key``) for the receiver to drop the repeat.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from typing import Any, Callable, Optional, TypeVar

from pulsetrace._suppress import suppressed

_F = TypeVar("_F", bound=Callable[..., Any])


def _untraced(fn: _F) -> _F:
    """The store's SQL is pulsetrace's own: never traced by its SQLite hook
    (whichever thread calls, the application's included)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with suppressed():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
  id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, name TEXT NOT NULL,
  severity TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL,
  value REAL, threshold REAL, operation TEXT, trace_id TEXT,
  fired_at REAL NOT NULL, step INTEGER NOT NULL DEFAULT -1,
  acked_by TEXT, acked_at REAL, resolved_at REAL);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts(rule_id, fired_at);
CREATE TABLE IF NOT EXISTS deliveries (
  alert_id TEXT NOT NULL, step INTEGER NOT NULL, channel TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
  at REAL NOT NULL, PRIMARY KEY (alert_id, step, channel));
CREATE TABLE IF NOT EXISTS history (
  alert_id TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, detail TEXT);
"""
OPEN = ("firing", "acknowledged")
#: The step of the resolved notice (after every escalation step).
RESOLVED_STEP = 100
#: The step of a test notice (``POST /monitoring/test/{id}?deliver=true``).
TEST_STEP = 200


class Store:
    """One SQLite file; a connection per thread, WAL, short transactions."""

    @_untraced
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db().executescript(_SCHEMA)  # idempotent
        except (OSError, sqlite3.Error) as exc:
            raise OSError(f"pulsetrace: cannot open the alert state {path!r}: {exc}") from None

    def _db(self) -> sqlite3.Connection:
        db: Optional[sqlite3.Connection] = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind: Any, *_: Any) -> None:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")

    def _tx(self) -> Store._Tx:
        return Store._Tx(self._db())

    # -- alerts ----------------------------------------------------------------

    @_untraced
    def open_alert(self, rule_id: str) -> Optional[dict[str, Any]]:
        row = (
            self._db()
            .execute(
                "SELECT * FROM alerts WHERE rule_id=? AND state IN ('firing','acknowledged')"
                " ORDER BY fired_at DESC LIMIT 1",
                (rule_id,),
            )
            .fetchone()
        )
        return dict(row) if row else None

    @_untraced
    def last_resolved_at(self, rule_id: str) -> Optional[float]:
        row = (
            self._db()
            .execute(
                "SELECT MAX(resolved_at) FROM alerts WHERE rule_id=? AND state='resolved'",
                (rule_id,),
            )
            .fetchone()
        )
        return row[0] if row else None

    @_untraced
    def fire(self, alert: dict[str, Any]) -> bool:
        """Insert a firing alert unless the rule has an open one."""
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM alerts WHERE rule_id=? AND state IN ('firing','acknowledged')",
                (alert["rule_id"],),
            ).fetchone():
                return False
            cols = ", ".join(alert)
            marks = ", ".join("?" for _ in alert)
            db.execute(f"INSERT INTO alerts ({cols}) VALUES ({marks})", tuple(alert.values()))
            _event(db, alert["id"], alert["fired_at"], "fired", alert["message"])
            return True

    @_untraced
    def advance(self, alert_id: str, step: int, channels: list[str], now: float) -> bool:
        """Decide step ``step`` (see the module's rule): True when this call
        moved the alert to it, with its deliveries recorded as pending."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE alerts SET step=? WHERE id=? AND state='firing' AND step=?",
                (step, alert_id, step - 1),
            )
            if cur.rowcount != 1:
                return False
            _pending(db, alert_id, step, channels, now)
            _event(db, alert_id, now, "escalated", json.dumps({"step": step, "channels": channels}))
            return True

    @_untraced
    def acknowledge(self, alert_id: str, by: str, now: float) -> Optional[dict[str, Any]]:
        """Acknowledge a firing alert; the alert as it now is (None: no such
        alert). Acknowledging twice keeps the first who and when."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "firing":
                db.execute(
                    "UPDATE alerts SET state='acknowledged', acked_by=?, acked_at=? WHERE id=?",
                    (by, now, alert_id),
                )
                _event(db, alert_id, now, "acknowledged", by)
            return dict(db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone())

    @_untraced
    def resolve(self, alert_id: str, now: float, channels: list[str]) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE alerts SET state='resolved', resolved_at=? WHERE id=?"
                " AND state IN ('firing','acknowledged')",
                (now, alert_id),
            )
            if cur.rowcount != 1:
                return False
            _pending(db, alert_id, RESOLVED_STEP, channels, now)
            _event(db, alert_id, now, "resolved", None)
            return True

    @_untraced
    def set_trace(self, alert_id: str, trace_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE alerts SET trace_id=? WHERE id=?", (trace_id, alert_id))

    @_untraced
    def note(self, alert_id: str, now: float, event: str, detail: Optional[str]) -> None:
        with self._tx() as db:
            _event(db, alert_id, now, event, detail)

    @_untraced
    def get(self, alert_id: str) -> Optional[dict[str, Any]]:
        row = self._db().execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return dict(row) if row else None

    @_untraced
    def alerts(
        self, state: Optional[str] = None, severity: Optional[str] = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM alerts WHERE 1=1", list[str]()
        if state:
            sql, args = sql + " AND state=?", [*args, state]
        if severity:
            sql, args = sql + " AND severity=?", [*args, severity]
        rows = self._db().execute(sql + " ORDER BY fired_at DESC LIMIT ?", (*args, limit))
        return [dict(r) for r in rows]

    @_untraced
    def firing(self) -> list[dict[str, Any]]:
        return self.alerts(state="firing", limit=100_000)

    @_untraced
    def history(self, alert_id: str) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT at, event, detail FROM history WHERE alert_id=? ORDER BY rowid", (alert_id,)
        )
        return [dict(r) for r in rows]

    # -- deliveries ------------------------------------------------------------

    @_untraced
    def deliveries(self, alert_id: Optional[str] = None) -> list[dict[str, Any]]:
        if alert_id is None:
            rows = self._db().execute("SELECT * FROM deliveries ORDER BY at, step, channel")
        else:
            rows = self._db().execute(
                "SELECT * FROM deliveries WHERE alert_id=? ORDER BY step, channel", (alert_id,)
            )
        return [dict(r) for r in rows]

    @_untraced
    def pending(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT * FROM deliveries WHERE status='pending' ORDER BY at")
        return [dict(r) for r in rows]

    @_untraced
    def record_test(self, alert_id: str, channels: list[str], now: float) -> None:
        with self._tx() as db:
            for ch in channels:
                db.execute(
                    "INSERT OR REPLACE INTO deliveries (alert_id, step, channel, status, at)"
                    " VALUES (?, ?, ?, 'pending', ?)",
                    (alert_id, TEST_STEP, ch, now),
                )

    @_untraced
    def delivered(
        self, alert_id: str, step: int, channel: str, ok: bool, attempts: int, error: Optional[str]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET status=?, attempts=?, error=? WHERE alert_id=? AND step=?"
                " AND channel=?",
                ("sent" if ok else "failed", attempts, error, alert_id, step, channel),
            )

    @_untraced
    def counts(self) -> dict[str, int]:
        out = {"firing": 0, "acknowledged": 0, "resolved": 0}
        for state, n in self._db().execute("SELECT state, COUNT(*) FROM alerts GROUP BY state"):
            out[state] = n
        for status, n in self._db().execute(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status"
        ):
            out[f"deliveries_{status}"] = n
        return out


def _pending(
    db: sqlite3.Connection, alert_id: str, step: int, channels: list[str], now: float
) -> None:
    """Record one pending delivery per channel for ``step`` of an alert
    (once: a row that exists already is kept)."""
    db.executemany(
        "INSERT OR IGNORE INTO deliveries (alert_id, step, channel, status, at)"
        " VALUES (?, ?, ?, 'pending', ?)",
        [(alert_id, step, ch, now) for ch in channels],
    )


def _event(db: sqlite3.Connection, alert_id: str, at: float, event: str, detail: Any) -> None:
    db.execute(
        "INSERT INTO history (alert_id, at, event, detail) VALUES (?, ?, ?, ?)",
        (alert_id, at, event, detail),
    )
