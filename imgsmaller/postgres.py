"""PostgreSQL through psycopg 3: the connection pool, `?` placeholders, rows by name, outages as 503.

Imports only the stdlib, psycopg, psycopg_pool, db.py's plain helpers and errors.py; in the package
only db.py imports it, and only once a PostgreSQL URL is used.
The code above writes SQL once, with SQLite's `?` placeholders; a `PgConnection` looks
like an autocommit sqlite3 connection (execute, executemany, rows by name and by index,
close), so the same statements run on both engines. What does differ per engine lives in
db.py's dialects (BEGIN, locks, "now", the claim's lock clause, the schema version).

One pool per process and URL. A connection is checked before it is handed out (a dead one
is dropped and the next tried at once: psycopg_pool's own check backs off 1, 2, 4 s per dead
connection, so a web node holding a few idle ones answered 503 after a server restart), and a
held connection found dead when it starts a unit of work (BEGIN, or a read outside a
transaction: nothing was done yet) is swapped for a fresh one and the statement sent again.
So a server restart or a killed backend costs no request and no job. A database that cannot
be reached within CONNECT_TIMEOUT_S, a statement running longer than STATEMENT_TIMEOUT_MS and
a connection lost mid-transaction all raise `DatabaseUnavailableError` (503), never a hang.
"""

import functools
import logging
import re
import threading
import time

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
_OPEN = (psycopg.pq.TransactionStatus.ACTIVE, psycopg.pq.TransactionStatus.INTRANS,
         psycopg.pq.TransactionStatus.INERROR)

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
                "keepalives_interval": "10", "keepalives_count": "3", "tcp_user_timeout": "30000",
                "application_name": "imgsmaller"}
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
                configure=_configure, name="imgsmaller",  # checked in _checked_conn, not by the pool
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
    return PgConnection(pool, _checked_conn(pool, url), url)


def _checked_conn(pool, url):
    """A live connection of `pool`: each dead one (server restarted, backend ended) goes back to
    the pool, which drops it and opens a new one, and the next is tried without waiting."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            conn = pool.getconn(max(0.0, deadline - time.monotonic()))  # a PoolTimeout is an OperationalError
        except _OUTAGES as error:
            raise _unavailable(error, url) from error
        try:
            conn.execute("")  # one round trip; an empty query
            return conn
        except _OUTAGES as error:
            pool.putconn(conn)
            if time.monotonic() >= deadline:
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


def _starts_unit(sql):
    """BEGIN, or a read: when it fails on a dead connection, nothing of ours was done there yet."""
    head = sql.lstrip()[:7].upper()
    return head in ("BEGIN", "SELECT ") or head.startswith("BEGIN ")


class PgConnection:
    """The subset of sqlite3.Connection the service uses, on one psycopg connection."""

    dialect_name = "postgresql"

    def __init__(self, pool, conn, url=None):
        self._pool = pool
        self._conn = conn
        self._url = url

    def execute(self, sql, params=()):
        retry = self._pool is not None and not self.in_transaction and _starts_unit(sql)
        while True:
            if self._conn is None:  # lost, and no new one could be had
                raise DatabaseUnavailableError()
            try:
                return self._conn.execute(translate(sql), tuple(params))
            except psycopg.IntegrityError as error:
                raise PostgresIntegrityError(_first_line(error)) from error
            except _OUTAGES as error:
                if not (retry and self._conn.broken):
                    raise _unavailable(error) from error
                log.info("A pooled connection was found dead (%s); reconnecting", _first_line(error))
            retry = False  # once: a fresh connection lost again is an outage
            conn, self._conn = self._conn, None
            self._pool.putconn(conn)  # broken: the pool drops it and opens another
            self._conn = _checked_conn(self._pool, self._url)

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
        """Inside BEGIN ... COMMIT. Not on a connection known lost (the server rolled back)."""
        return self._conn is not None and self._conn.info.transaction_status in _OPEN

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


class Listener:
    """LISTEN on `channel` over a connection of its own (a pooled one would be handed to others),
    in a daemon thread that calls `on_notify()` at each NOTIFY. A lost connection (server restart,
    backend ended) is opened again after RETRY_S (doubling while it fails); `on_notify()` is also called then, since a
    NOTIFY sent while nobody listened is lost. `listening` says whether it is connected now."""

    RETRY_S = 1.0
    MAX_RETRY_S = 30.0  # meanwhile the slots poll (job_store.POLL_S)
    STEP_S = 1.0  # how often the thread looks at `stop`

    def __init__(self, url, channel, on_notify):
        self.url, self.channel, self.on_notify = url, channel, on_notify
        self.listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imgsmaller-listen", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(self.STEP_S + 5)

    def _run(self):
        delay = self.RETRY_S
        while not self._stop.is_set():
            try:
                conn = connect_direct(self.url)._conn
            except psycopg.Error as error:
                log.warning("LISTEN %s: cannot connect (%s); trying again in %ss", self.channel,
                            _first_line(error), delay)
                self._stop.wait(delay)
                delay = min(2 * delay, self.MAX_RETRY_S)  # an outage: one line now and then, not every second
                continue
            delay = self.RETRY_S
            try:
                self._listen(conn)
            except psycopg.Error as error:
                if not self._stop.is_set():
                    log.warning("LISTEN %s: connection lost (%s); reconnecting", self.channel, _first_line(error))
            finally:
                self.listening = False
                conn.close()

    def _listen(self, conn):
        conn.execute(f"LISTEN {self.channel}")
        self.listening = True
        self.on_notify()
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=self.STEP_S):
                self.on_notify()
