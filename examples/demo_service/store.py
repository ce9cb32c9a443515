"""The demo service's data: contacts, templates, campaigns and messages in
one SQLite file.

The runner creates and seeds the file before the service starts
(:func:`create`); each thread of each worker then opens its own connection
(:func:`connection`), after gunicorn has forked it. The queries go through
Python's ``sqlite3`` module, which pulsetrace instruments: each statement is
a CLIENT span with ``db.system.name`` ``sqlite`` and its text, literals
replaced by ``?``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from typing import Any, Optional

#: Where the runner puts the database (the path of the file).
DB_ENV = "DEMO_DB"

SCHEMA = """
CREATE TABLE companies (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    company_id TEXT NOT NULL REFERENCES companies(id),
    name TEXT NOT NULL,
    phone TEXT NOT NULL,
    opted_in INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE templates (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    message_type TEXT NOT NULL
);
CREATE TABLE campaigns (
    id INTEGER PRIMARY KEY,
    company_id TEXT NOT NULL REFERENCES companies(id),
    name TEXT NOT NULL,
    template TEXT NOT NULL REFERENCES templates(name)
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts(id),
    campaign_id INTEGER REFERENCES campaigns(id),
    template TEXT NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT,
    error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX messages_by_campaign ON messages(campaign_id, status);
"""

COMPANIES = [("comp_acme", "Acme Retail"), ("comp_globex", "Globex Travel")]
TEMPLATES = [
    ("welcome", "Hi {name}, welcome to {company}!", "text"),
    ("order_shipped", "Hi {name}, your order is on its way.", "text"),
    ("appointment_reminder", "Hi {name}, see you tomorrow at 10:00.", "text"),
    ("promo_image", "{name}, 20% off this weekend only.", "image"),
]
CAMPAIGNS = [
    (1, "comp_acme", "Spring sale", "promo_image"),
    (2, "comp_acme", "Order updates", "order_shipped"),
    (3, "comp_globex", "Trip reminders", "appointment_reminder"),
]
FIRST = ["Ana", "Bruno", "Carla", "Diego", "Elisa", "Fabio", "Gabi", "Hugo", "Iris", "Joao"]
LAST = ["Silva", "Souza", "Costa", "Lima", "Rocha", "Alves", "Nunes", "Melo"]
SEED_CONTACTS = 60


def create(path: str) -> None:
    """Create the database file at ``path`` with the schema and seed data."""
    rng = random.Random(20240601)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO companies VALUES (?, ?)", COMPANIES)
        db.executemany("INSERT INTO templates VALUES (?, ?, ?)", TEMPLATES)
        db.executemany("INSERT INTO campaigns VALUES (?, ?, ?, ?)", CAMPAIGNS)
        contacts = [
            (
                COMPANIES[i % len(COMPANIES)][0],
                f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                f"+55119{rng.randrange(10**7, 10**8)}",
            )
            for i in range(SEED_CONTACTS)
        ]
        db.executemany("INSERT INTO contacts (company_id, name, phone) VALUES (?, ?, ?)", contacts)
    db.close()


_local = threading.local()


def connection() -> sqlite3.Connection:
    """This thread's connection (opened on first use, in the worker)."""
    db: Optional[sqlite3.Connection] = getattr(_local, "db", None)
    if db is None:
        db = sqlite3.connect(os.environ[DB_ENV], timeout=5.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        _local.db = db
    return db


def rows(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a query, as dicts."""
    return [dict(r) for r in connection().execute(sql, params).fetchall()]


def row(sql: str, params: tuple[Any, ...] = ()) -> Optional[dict[str, Any]]:
    """The first row of a query, or None."""
    found = connection().execute(sql, params).fetchone()
    return None if found is None else dict(found)


def write(sql: str, params: tuple[Any, ...] = ()) -> int:
    """Run one INSERT/UPDATE; the id of the inserted row."""
    cur = connection().execute(sql, params)
    return int(cur.lastrowid or 0)
