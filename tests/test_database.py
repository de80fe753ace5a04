"""The database layer on SQLite and PostgreSQL: SQL translation, rows, migrations, races, bad settings, outages.

PostgreSQL tests use IMGSMALLER_TEST_DATABASE_URL (a fresh schema each) and skip without it.
An outage is made real without touching the machine's cluster: the app talks to PostgreSQL
through a TCP relay of the test's own, which the test closes and opens again.
"""

import io
import socket
import threading
import time
import urllib.parse
from datetime import UTC, datetime

import pytest

from imgsmaller import accounts, db, job_store, postgres, quota
from imgsmaller.errors import DatabaseUnavailableError, QuotaExceededError
from imgsmaller.settings import SettingsError

from helpers import build_app, fresh_schema, own_connection, postgres_url, shut_down
from images import image_bytes

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def target(tmp_path, database_url):
    """An initialised database: a SQLite path, or a fresh PostgreSQL schema's URL."""
    target = database_url or str(tmp_path / "db.sqlite3")
    db.init_db(target)
    return target


def run_threads(count, work):
    barrier = threading.Barrier(count, timeout=60)
    errors = []

    def run():
        try:
            work(barrier)
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def test_placeholders_become_psycopgs_and_quoted_text_is_kept():
    assert postgres.translate("SELECT * FROM t WHERE a = ? AND b LIKE 'x?%' AND c = ?") == \
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%' AND c = %s"
    assert postgres.translate("SELECT 'it''s ?', \"odd?\" % 2") == "SELECT 'it''s ?', \"odd?\" %% 2"


@pytest.mark.engines
def test_rows_are_read_by_name_and_by_position(target):
    connection = db.connect(target)
    try:
        row = connection.execute("SELECT 7 AS n, 'a%' AS s WHERE ? = ?", (1, 1)).fetchone()
        assert (row["n"], row["s"], row[0], tuple(row), dict(row)) == (7, "a%", 7, (7, "a%"), {"n": 7, "s": "a%"})
        assert connection.execute(f"SELECT {db.dialect(connection).now_iso}").fetchone()[0].endswith("Z")
    finally:
        connection.close()


@pytest.mark.engines
def test_init_db_from_many_processes_at_once_upgrades_once_and_keeps_data(database_url, tmp_path):
    target = database_url or str(tmp_path / "db.sqlite3")
    run_threads(8, lambda barrier: (barrier.wait(), db.init_db(target)))
    connection = own_connection(target)
    try:
        assert db.schema_version(connection) == db.SCHEMA_VERSION
        accounts.create_user(connection, "kept@example.org")
        db.init_db(target)  # every deploy runs it again
        assert accounts.get_user_by_email(connection, "KEPT@example.org") is not None
        if database_url:
            versions = [r[0] for r in connection.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == list(range(db.PG_BASE_VERSION, db.SCHEMA_VERSION + 1))
    finally:
        connection.close()


@pytest.mark.engines
def test_a_duplicate_email_in_any_case_is_refused_on_both_engines(target):
    connection = db.connect(target)
    try:
        accounts.create_user(connection, "Ada@Example.org")
        with pytest.raises(accounts.AccountError, match="already exists"):
            accounts.create_user(connection, "ada@example.ORG")
    finally:
        connection.close()


@pytest.mark.engines
def test_the_quota_gives_exactly_the_limit_to_32_racing_threads(target):
    """One upsert with a WHERE: a select-then-update let 125 of 100 through on PostgreSQL."""
    setup = db.connect(target)
    user_id, _ = accounts.create_user(setup, "race@example.org", daily_limit=40)
    user = accounts.get_user(setup, user_id)
    setup.close()
    granted = []

    def work(barrier):
        connection = own_connection(target)
        try:
            barrier.wait()
            for _ in range(4):
                try:
                    with db.transaction(connection):
                        quota.charge(connection, user, 100, NOON)
                    granted.append(1)
                except QuotaExceededError:
                    pass
        finally:
            connection.close()

    run_threads(32, work)
    assert len(granted) == 40
    check = db.connect(target)
    assert quota.quota_status(check, user, 100, NOON).used == 40
    check.close()


@pytest.mark.engines
def test_a_limit_of_zero_grants_nothing(target):
    connection = db.connect(target)
    user_id, _ = accounts.create_user(connection, "zero@example.org", daily_limit=0)
    with pytest.raises(QuotaExceededError), db.transaction(connection):
        quota.charge(connection, accounts.get_user(connection, user_id), 100, NOON)
    connection.close()


def queue_jobs(target, count):
    connection = db.connect(target)
    with db.transaction(connection):
        connection.executemany(
            "INSERT INTO jobs (progress_key, download_token, output, created_at, expires_at)"
            " VALUES (?, 'token', 'png', '2026-12-01T00:00:00Z', '2999-01-01T00:00:00Z')",
            [(f"key-{n}",) for n in range(count)])
    connection.close()


@pytest.mark.engines
def test_32_racing_workers_claim_each_job_exactly_once(target):
    queue_jobs(target, 300)
    claims = []

    def work(barrier):
        connection = own_connection(target)
        try:
            barrier.wait()
            while (job := job_store.claim_next_job(connection, threading.current_thread().name)) is not None:
                claims.append(job["id"])
        finally:
            connection.close()

    run_threads(32, work)
    assert len(claims) == 300 and len(set(claims)) == 300
    connection = db.connect(target)
    assert job_store.count_by_status(connection) == {"queued": 0, "running": 300}
    connection.close()


def test_a_statement_that_runs_too_long_is_a_database_outage(monkeypatch):
    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 200)
    with fresh_schema(postgres_url()) as url:
        connection = db.connect(url)
        try:
            with pytest.raises(DatabaseUnavailableError):
                connection.execute("SELECT pg_sleep(5)")
            assert connection.execute("SELECT 1").fetchone()[0] == 1  # the connection itself still works
        finally:
            connection.close()


# -- bad settings stop start-up, with words -------------------------------------------


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_database_stops_start_up_with_a_clear_message(tmp_path):
    url = f"postgresql://postgres:hunter2@127.0.0.1:{closed_port()}/test"
    with pytest.raises(SettingsError) as raised:
        build_app(tmp_path, DATABASE_URL=url)
    message = str(raised.value)
    assert "Cannot connect to the database" in message and "DATABASE_URL" in message
    assert "refused" in message.lower() and "hunter2" not in message


def test_a_wrong_user_stops_start_up_naming_the_cause(tmp_path):
    parts = urllib.parse.urlsplit(postgres_url())
    url = urllib.parse.urlunsplit(parts._replace(netloc="no_such_user_here@" + parts.netloc.rpartition("@")[2]))
    with pytest.raises(SettingsError, match="no_such_user_here"):
        build_app(tmp_path, DATABASE_URL=url)


@pytest.mark.parametrize("url", ["mysql://db/app", "postgresql://db:port/app", "postgresql://db:5432/"])
def test_a_malformed_url_stops_start_up_naming_the_setting(tmp_path, url):
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        build_app(tmp_path, DATABASE_URL=url)


# -- an outage at run time ------------------------------------------------------------


class Relay:
    """A TCP relay 127.0.0.1:port -> PostgreSQL that the test can cut (every connection) and restore."""

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.port = closed_port()
        self.sockets = []
        self.listener = None

    def start(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self):
        for sock in [self.listener, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.sockets = []

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_a_database_outage_is_a_503_with_a_message_and_the_app_recovers(tmp_path):
    from psycopg.conninfo import conninfo_to_dict

    with fresh_schema(postgres_url()) as url:
        parts = conninfo_to_dict(url)
        relay = Relay(parts.get("host", "127.0.0.1"), int(parts.get("port", 5432)))
        relay.start()
        relayed = url.replace(f":{parts.get('port', 5432)}/", f":{relay.port}/", 1)
        assert relayed != url
        app = build_app(tmp_path, DATABASE_URL=relayed)
        try:
            client = app.test_client()
            connection = db.connect(relayed)
            _, key = accounts.create_user(connection, "outage@example.org")
            connection.close()
            headers = {"X-API-Key": key}
            assert client.get("/api/v1/info", headers=headers).status_code == 200

            relay.cut()
            for path in ("/api/v1/info", "/readyz"):
                response = client.get(path, headers=headers)
                assert response.status_code == 503, response.get_json()
                assert "database" in response.get_json()["message"].lower()
            upload = client.post("/api/v1/compress", headers=headers,
                                 data={"file": (io.BytesIO(image_bytes()), "a.png")})
            assert upload.status_code == 503 and "database" in upload.get_json()["message"].lower()

            relay.start()  # the database is back: the pool reconnects on its own
            assert client.get("/api/v1/info", headers=headers).status_code == 200
            assert client.get("/readyz").status_code == 200
        finally:
            shut_down(app)
            relay.cut()
            db.close_pools(relayed)


def test_a_killed_backend_costs_no_request(tmp_path):
    """pg_terminate_backend (or a server restart) ends our pooled connections; the next request reconnects."""
    with fresh_schema(postgres_url()) as scoped:
        name = f"imgsmaller-test-{id(tmp_path)}"  # only this test's connections are ended
        url = f"{scoped}&application_name={name}"
        app = build_app(tmp_path, DATABASE_URL=url)
        try:
            client = app.test_client()
            assert client.get("/readyz").status_code == 200
            admin = postgres.connect_direct(postgres_url())
            try:
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                       " WHERE application_name = ?", (name,)).fetchone()[0]
            finally:
                admin.close()
            assert killed >= 1
            assert client.get("/readyz").status_code == 200
        finally:
            shut_down(app)
            db.close_pools(url)


def end_backends(name):
    """pg_terminate_backend on every connection named `name` (application_name); how many there were."""
    admin = postgres.connect_direct(postgres_url())
    try:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                             " WHERE application_name = ? AND pid <> pg_backend_pid()", (name,)).fetchone()[0]
    finally:
        admin.close()


def named(scoped, tmp_path):
    name = f"imgsmaller-test-{id(tmp_path)}"  # only this test's connections are ended
    return f"{scoped}&application_name={name}", name


def test_several_dead_idle_connections_cost_no_request(tmp_path):
    """A web node holds a few idle pooled connections; a server restart ends them all. The pool's
    own check backed off 1, 2, 4 s per dead one and the request got a 503 after 5 s."""
    with fresh_schema(postgres_url()) as scoped:
        url, name = named(scoped, tmp_path)
        app = build_app(tmp_path, DATABASE_URL=url)
        try:
            held = [db.connect(url) for _ in range(6)]  # as six requests at once would
            for connection in held:
                connection.close()
            assert end_backends(name) >= 6
            client = app.test_client()
            assert client.get("/readyz").status_code == 200
            assert client.get("/api/v1/info").status_code in (200, 401)
        finally:
            shut_down(app)
            db.close_pools(url)


def test_a_held_connection_found_dead_at_begin_is_replaced_but_a_loss_inside_a_transaction_is_an_outage(tmp_path):
    """A job slot keeps its connection between jobs: the next transaction gets a fresh one (nothing
    was done on the dead one yet). Lost mid-transaction, the work is gone: 503, never a silent redo."""
    with fresh_schema(postgres_url()) as scoped:
        url, name = named(scoped, tmp_path)
        db.init_db(url)
        connection = db.connect(url)
        try:
            assert end_backends(name) >= 1
            with db.transaction(connection):
                assert connection.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
            assert end_backends(name) >= 1
            assert connection.execute("SELECT 1").fetchone()[0] == 1  # a read outside a transaction: sent again
            with pytest.raises(DatabaseUnavailableError):
                with db.transaction(connection):
                    connection.execute("SELECT 1")
                    assert end_backends(name) >= 1
                    connection.execute("UPDATE jobs SET status = status")
            with db.transaction(connection):  # and the connection after that works again
                connection.execute("SELECT 1")
        finally:
            connection.close()
            db.close_pools(url)


def test_listen_hears_each_notify_and_reconnects_after_its_connection_was_ended(tmp_path):
    with fresh_schema(postgres_url()) as scoped:
        url, name = named(scoped, tmp_path)
        heard = threading.Event()
        listener = db.listen(url, job_store.JOBS_CHANNEL, heard.set)
        sender = own_connection(scoped)
        try:
            for _ in range(2):
                assert heard.wait(30)  # on connecting: a NOTIFY sent while nobody listened is lost
                wait_until(lambda: listener.listening)
                heard.clear()
                sender.execute("NOTIFY " + job_store.JOBS_CHANNEL)
                assert heard.wait(30)
                heard.clear()
                assert end_backends(name) == 1  # the listener's connection: it opens another
        finally:
            listener.stop()
            sender.close()


def wait_until(check, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_backup_on_postgresql_points_to_pg_dump(tmp_path):
    with fresh_schema(postgres_url()) as url:
        app = build_app(tmp_path, DATABASE_URL=url)
        try:
            result = app.test_cli_runner().invoke(args=["backup", str(tmp_path / "copy")])
            assert result.exit_code != 0 and "pg_dump" in result.output
        finally:
            shut_down(app)


def test_copy_to_postgres_moves_accounts_usage_and_jobs_and_the_install_carries_on(tmp_path, client, cli, user):
    upload = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                         data={"file": (io.BytesIO(image_bytes()), "a.png")}).get_json()
    with fresh_schema(postgres_url()) as url:
        result = cli.invoke(args=["copy-to-postgres", url])
        assert result.exit_code == 0, result.output
        assert "Copied 1 account(s), 1 day(s) of usage and 1 job(s)" in result.output
        again = cli.invoke(args=["copy-to-postgres", url])
        assert again.exit_code != 0 and "already has accounts" in again.output

        moved = build_app(tmp_path, DATABASE_URL=url)  # same STORAGE_DIR: the copied jobs' files are there
        try:
            pg_client, headers = moved.test_client(), {"X-API-Key": user["key"]}
            assert pg_client.get("/api/v1/info", headers=headers).get_json()["remaining_today"] == 99
            done = pg_client.get(f"/result/{upload['progress_key']}").get_json()
            assert done["status"] == "done" and pg_client.get(done["download"]).status_code == 200
            second = pg_client.post("/api/v1/compress", headers=headers,
                                    data={"file": (io.BytesIO(image_bytes()), "b.png")}).get_json()
            assert pg_client.get(f"/result/{second['progress_key']}").get_json()["image_id"] > done["image_id"]
        finally:
            shut_down(moved)
