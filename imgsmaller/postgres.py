"""PostgreSQL through psycopg 3: the connection pool, `?` placeholders, rows by name, outages as 503.

Imports only the stdlib, psycopg, psycopg_pool, db.py's plain helpers and errors.py; in the package
only db.py imports it, and only once a PostgreSQL URL is used.
The code above writes SQL once, with SQLite's `?` placeholders; a `PgConnection` looks
like an autocommit sqlite3 connection (execute, executemany, rows by name and by index,
close), so the same statements run on both engines. What does differ per engine lives in
db.py's dialects (BEGIN, locks, "now", the claim's lock clause, the schema version).

One pool per process and URL. A connection is checked before it is handed out, so a
server restart or a killed backend costs no request; a database that cannot be reached
within CONNECT_TIMEOUT_S, a statement running longer than STATEMENT_TIMEOUT_MS and a
connection lost mid-statement all raise `DatabaseUnavailableError` (503), never a hang.
"""

import functools
import logging
import re
import threading

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from .db import PostgresIntegrityError, is_postgres, safe_url
from .errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # a database that does not answer: 503 after this, not a hang
STATEMENT_TIMEOUT_MS = 15_000  # no statement of ours takes more than milliseconds; a lock wait ends here
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000  # a process stuck inside a transaction releases its locks
POOL_MAX_SIZE = 20  # per process: request threads + job threads + maintenance, with room to spare
Error = psycopg.Error
_OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError)

_pools = {}
_pools_lock = threading.Lock()


is_url = is_postgres


def check_url(url):
    """Raise ValueError, in words, when `url` is not a PostgreSQL URL psycopg can use."""
    if not is_url(url):
        raise ValueError("must be empty (SQLite at DATABASE) or a URL like postgresql://user@host:5432/dbname")
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ValueError(f"is not a valid PostgreSQL URL ({_first_line(error)})") from None
    if not parts.get("dbname"):
        raise ValueError("must name the database: postgresql://user@host:5432/dbname")


def connection_kwargs(url):
    """Our timeouts and keepalives, unless the URL sets its own."""
    parts = conninfo.conninfo_to_dict(url)
    defaults = {"connect_timeout": str(CONNECT_TIMEOUT_S), "keepalives": "1", "keepalives_idle": "30",
                "keepalives_interval": "10", "keepalives_count": "3", "application_name": "imgsmaller"}
    return {name: value for name, value in defaults.items() if name not in parts}


def _configure(conn):
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")


def _pool(url):
    with _pools_lock:
        pool = _pools.get(url)
        if pool is None:
            pool = ConnectionPool(
                url, min_size=1, max_size=POOL_MAX_SIZE, open=False, timeout=CONNECT_TIMEOUT_S,
                kwargs={"autocommit": True, "row_factory": row_factory, **connection_kwargs(url)},
                configure=_configure, check=ConnectionPool.check_connection, name="imgsmaller",
            )
            pool.open(wait=False)
            _pools[url] = pool
        return pool


def close_pools(url=None):
    """Close this process's pool for `url` (all pools when None): tests, and processes that end."""
    with _pools_lock:
        urls = list(_pools) if url is None else [url]
        closing = [_pools.pop(u) for u in urls if u in _pools]
    for pool in closing:
        pool.close()


def connect(url):
    """A pooled connection; `close()` gives it back. Raises DatabaseUnavailableError when none can be had."""
    pool = _pool(url)
    try:
        return PgConnection(pool, pool.getconn())
    except _OUTAGES as error:
        raise _unavailable(error, url) from error


def connect_direct(url):
    """A connection outside the pool (start-up, migrations): the driver's error tells what is wrong."""
    conn = psycopg.connect(url, autocommit=True, row_factory=row_factory, **connection_kwargs(url))
    _configure(conn)
    return PgConnection(None, conn)


def _unavailable(error, url=None):
    log.warning("Database unavailable%s: %s", f" ({safe_url(url)})" if url else "", _first_line(error))
    return DatabaseUnavailableError()


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def describe_connect_error(error):
    """One line saying why a connection failed, without the password."""
    return _first_line(error)


@functools.lru_cache(maxsize=1024)
def translate(sql):
    """`?` placeholders to psycopg's `%s`; a literal `%` doubled. Quoted text keeps its `?`."""
    def replace(match):
        text = match.group()
        if text == "?":
            return "%s"
        return text.replace("%", "%%")

    return _TOKENS.sub(replace, sql)


_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


class Row(tuple):
    """A row readable by column name and by position, like sqlite3.Row."""

    def __new__(cls, index, values):
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._index)


def row_factory(cursor):
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(index, values)


class PgConnection:
    """The subset of sqlite3.Connection the service uses, on one psycopg connection."""

    dialect_name = "postgresql"

    def __init__(self, pool, conn):
        self._pool = pool
        self._conn = conn

    def execute(self, sql, params=()):
        try:
            return self._conn.execute(translate(sql), tuple(params))
        except psycopg.IntegrityError as error:
            raise PostgresIntegrityError(_first_line(error)) from error
        except _OUTAGES as error:
            raise _unavailable(error) from error

    def executemany(self, sql, seq_of_params):
        try:
            with self._conn.cursor() as cursor:
                cursor.executemany(translate(sql), [tuple(p) for p in seq_of_params])
                return cursor
        except psycopg.IntegrityError as error:
            raise PostgresIntegrityError(_first_line(error)) from error
        except _OUTAGES as error:
            raise _unavailable(error) from error

    def executescript(self, script):
        """Several statements, no parameters (schema files, migrations)."""
        try:
            self._conn.execute(script)
        except _OUTAGES as error:
            raise _unavailable(error) from error

    @property
    def in_transaction(self):
        return self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self):
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pool is None:
            conn.close()
        else:
            self._pool.putconn(conn)  # the pool rolls back anything left open and drops broken ones

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
