"""SQLite connections, transactions, schema creation and upgrades. Imports only the stdlib.

Every part of the service (requests, the job pool, the CLI) opens its connections
with `connect`, so they all run with the same pragmas. The per-request connection
of the Flask app lives in `flask_db.py`.
"""

import os
import sqlite3
from datetime import datetime, timezone

SCHEMA_VERSION = 4
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema.sql")


def add_column(table, column, declaration):
    """A migration step adding a column unless it is there (schema.sql of a new database has it already)."""
    def migrate(db):
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    return migrate


# Upgrades from version N-1 to N, applied in order by init_db: {N: "SQL" or a function of the connection}.
# Each must be idempotent: a new database runs them all after schema.sql.
MIGRATIONS = {
    # 2: the shared log-in and sign-up throttles (imgsmaller/throttle.py), as in schema.sql.
    2: """
    CREATE TABLE IF NOT EXISTS throttle_events (
        id INTEGER PRIMARY KEY, bucket TEXT NOT NULL, at REAL NOT NULL, expires_at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS throttle_events_bucket ON throttle_events(bucket, expires_at);
    CREATE INDEX IF NOT EXISTS throttle_events_expiry ON throttle_events(expires_at);
    """,
    # 3: a done job's warnings (a JSON list of sentences), as in schema.sql.
    3: add_column("jobs", "warnings", "TEXT"),
    # 4: job leases on the database clock (job_store.claim_next_job, requeue_expired_leases), as in
    # schema.sql. A job left running by the code before leases has none: the reaper counts that
    # as expired and queues it again (its old process's late finish is fenced out).
    4: add_column("jobs", "lease_expires_at", "TEXT"),
}


def connect(path):
    """A connection with the settings every part of the service relies on."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 30000")
    return db


class transaction:
    """`with transaction(db):` runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error.

    IMMEDIATE takes the write lock up front, so a read that decides a write
    (quota, job claims) cannot race another writer.
    """

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        else:
            self.db.execute("ROLLBACK")
        return False


def init_db(path):
    """Create the schema or upgrade it to SCHEMA_VERSION; never drops data."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = connect(path)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # a new database: schema.sql is the current version, no migration applies
            with open(SCHEMA_PATH, encoding="utf-8") as file:
                db.executescript(file.read())
            version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"Database {path} has schema version {version}, newer than this code ({SCHEMA_VERSION}).")
        for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            step = MIGRATIONS[target]
            if callable(step):
                step(db)
            else:
                db.executescript(step)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        db.close()


def utcnow():
    return datetime.now(timezone.utc)


def to_iso(moment):
    """Timestamps are stored as ISO 8601 UTC text with a Z, which sorts as time."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
