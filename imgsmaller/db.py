"""Connections, transactions, schema creation and upgrades, on SQLite or PostgreSQL.

Imports only the stdlib and errors.py; postgres.py (psycopg) only once a PostgreSQL URL is
used, so the SQLite default never loads a driver it does not need. Every part of the service
(requests, the job pool, the CLI) opens its connections with `connect(database_of(config))`:
the SQLite file at DATABASE by default, PostgreSQL when DATABASE_URL is set. Both
connections take the same SQL, written with `?` placeholders, and give rows readable by
column name. What differs per engine is here, in `Dialect`: how a write transaction
begins, named locks, the claim's lock clause, "now", the schema version. The per-request
connection of the Flask app lives in `flask_db.py`.
"""

import os
import re
import sqlite3
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import DatabaseUnavailableError

SCHEMA_VERSION = 5
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_PATH = os.path.join(_ROOT, "schema.sql")
PG_SCHEMA_PATH = os.path.join(_ROOT, "schema_postgres.sql")
# schema_postgres.sql is this version: a PostgreSQL database has no history before it, so
# the migrations up to it are SQLite's alone; each later one runs on both engines (a string:
# the same SQL on both; or {"sqlite": "SQL", "postgresql": "SQL"}), after the schema file too,
# so every statement must be idempotent.
PG_BASE_VERSION = 4


def add_column(table, column, declaration):
    """A SQLite migration step adding a column unless it is there."""
    def migrate(db):
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    return migrate


# Upgrades from version N-1 to N, applied in order by init_db: {N: "SQL", a function of the
# connection (SQLite-only steps, up to PG_BASE_VERSION), or {"sqlite": ..., "postgresql": ...}}.
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
    # 5: emails are looked up as lower(email) = lower(?), the same text on both engines.
    5: "CREATE INDEX IF NOT EXISTS users_email_lower ON users (lower(email));",
}
MIGRATION_LOCK = 0x696D67736D616C6C  # pg_advisory_xact_lock key of init_db ("imgsmall")



class PostgresIntegrityError(Exception):
    """PostgreSQL refused a write for a constraint (psycopg's IntegrityError, re-raised by postgres.py)."""


IntegrityError = (sqlite3.IntegrityError, PostgresIntegrityError)
# What "the database failed" means to a caller that must carry on (readiness, metrics).
Error = (sqlite3.Error, DatabaseUnavailableError, PostgresIntegrityError)


class DatabaseStartupError(RuntimeError):
    """The configured database cannot be used at start-up; the message says why, in words."""


def _postgres():
    from . import postgres

    return postgres


def is_postgres(target):
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def safe_url(url):
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:@/]*):[^@/]*@", r"\1:***@", url)


def close_pools(url=None):
    """Close this process's PostgreSQL pool for `url` (all when None); tests and ending processes."""
    if "imgsmaller.postgres" in sys.modules:
        _postgres().close_pools(url)


def database_of(config):
    """What `connect` takes: DATABASE_URL when set, else the SQLite path DATABASE."""
    return config.get("DATABASE_URL") or config["DATABASE"]


def describe(target):
    """The database for messages: the path, or the URL without its password."""
    return safe_url(target) if is_postgres(target) else target


class SqliteConnection(sqlite3.Connection):
    dialect_name = "sqlite"


def connect(target):
    """A connection with the settings every part of the service relies on; `close()` it after use."""
    if is_postgres(target):
        return _postgres().connect(target)
    db = sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, factory=SqliteConnection)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def listen(target, channel, on_notify):
    """PostgreSQL: a started postgres.Listener calling `on_notify()` at each NOTIFY on `channel`
    (`stop()` it). SQLite has no such thing: None, and callers poll."""
    return _postgres().Listener(target, channel, on_notify).start() if is_postgres(target) else None


def connect_unpooled(target):
    """A connection of its own, outside the process's pool (long copies, tests acting as another process)."""
    return _postgres().connect_direct(target) if is_postgres(target) else connect(target)


@dataclass(frozen=True)
class Dialect:
    name: str
    begin: str  # starts a transaction that will write
    skip_locked: str  # appended to a `SELECT ... LIMIT 1` that picks a row to claim
    now_iso: str  # the database's clock as our timestamp text (2026-12-01T10:00:00Z)
    now_plus_iso: str  # the same, plus `?` seconds (one parameter)


SQLITE = Dialect("sqlite", "BEGIN IMMEDIATE", "", "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')",
                 "strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+' || ? || ' seconds')")
POSTGRESQL = Dialect("postgresql", "BEGIN", " FOR UPDATE SKIP LOCKED",
                     "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                     "to_char((now() + make_interval(secs => ?)) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
_DIALECTS = {"sqlite": SQLITE, "postgresql": POSTGRESQL}


def dialect(db):
    return _DIALECTS[db.dialect_name]


class transaction:
    """`with transaction(db):` runs BEGIN ... COMMIT, or ROLLBACK on error.

    On SQLite, BEGIN IMMEDIATE takes the write lock up front, so a read that decides a
    write (job claims, throttles) cannot race another writer. PostgreSQL has no such
    lock: a statement that must not race is written to be atomic by itself (a conditional
    UPDATE, an upsert with a WHERE), or the transaction names `locks`: each is a
    pg_advisory_xact_lock, taken in sorted order (no deadlock) and held until the end.
    """

    def __init__(self, db, locks=()):
        self.db = db
        self.locks = sorted(set(locks))

    def __enter__(self):
        kind = dialect(self.db)
        self.db.execute(kind.begin)
        try:
            if kind is POSTGRESQL:
                for name in self.locks:
                    self.db.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))
        except BaseException:
            self._rollback()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()
        return False

    def _rollback(self):
        try:
            self.db.execute("ROLLBACK")
        except Error:
            pass  # the connection is gone (the server rolled back): the first error is the one to report


def copy_rows(db, table, rows):
    """Insert `rows` (from another database's `SELECT *`) into `table`, ids included; inside a transaction.

    On PostgreSQL the table's identity then continues after the largest id copied."""
    rows = list(rows)
    if rows:
        columns = rows[0].keys()
        db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                       [tuple(row) for row in rows])
    if dialect(db) is POSTGRESQL and "id" in (rows[0].keys() if rows else ()):
        db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    return len(rows)


def schema_version(db):
    """The schema version the database is at (0: empty)."""
    if dialect(db) is SQLITE:
        return db.execute("PRAGMA user_version").fetchone()[0]
    if not db.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:
        return 0
    return db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def init_db(target):
    """Create the schema or upgrade it to SCHEMA_VERSION; never drops data.

    Raises DatabaseStartupError when the database cannot be reached or is newer than this code."""
    if is_postgres(target):
        _init_postgres(target)
    else:
        _init_sqlite(target)


def _init_sqlite(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = connect(path)
    try:
        version = schema_version(db)
        _refuse_newer(version, path)
        if version == 0:  # a new database: schema.sql is the current version, no migration applies
            with open(SCHEMA_PATH, encoding="utf-8") as file:
                db.executescript(file.read())
            version = SCHEMA_VERSION
        for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            _migrate(db, target, "sqlite")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        db.close()


def _init_postgres(url):
    postgres = _postgres()
    try:
        db = postgres.connect_direct(url)
    except postgres.Error as error:
        raise DatabaseStartupError(f"Cannot connect to the database {safe_url(url)}: "
                                   f"{postgres.describe_connect_error(error)}") from None
    try:
        # Hosts starting together queue on this lock; the later ones then find the schema current.
        with transaction(db):
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            db.executescript("CREATE TABLE IF NOT EXISTS schema_migrations ("
                             "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            version = schema_version(db)
            _refuse_newer(version, safe_url(url))
            applied = []
            if version == 0:
                with open(PG_SCHEMA_PATH, encoding="utf-8") as file:
                    db.executescript(file.read())
                applied.append(PG_BASE_VERSION)
            for target in range(max(version, PG_BASE_VERSION) + 1, SCHEMA_VERSION + 1):
                _migrate(db, target, "postgresql")
                applied.append(target)
            db.executemany("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                           [(v, to_iso(utcnow())) for v in applied])
    finally:
        db.close()


def _refuse_newer(version, where):
    if version > SCHEMA_VERSION:
        raise DatabaseStartupError(
            f"Database {where} has schema version {version}, newer than this code ({SCHEMA_VERSION}).")


def _migrate(db, version, engine):
    migration = MIGRATIONS[version]
    if callable(migration):  # a SQLite-only step (PostgreSQL starts at PG_BASE_VERSION)
        migration(db)
    else:
        db.executescript(migration if isinstance(migration, str) else migration.get(engine, ""))


def utcnow():
    return datetime.now(UTC)


def to_iso(moment):
    """Timestamps are stored as ISO 8601 UTC text with a Z, which sorts as time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
