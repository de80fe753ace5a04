"""Fixtures: the real app on a temporary instance (SQLite file and storage folder under tmp_path).

A module or test marked `engines` runs each test that uses the database (the `app`,
`database_url` or `engine` fixture) twice: on SQLite, and on PostgreSQL at
IMGSMALLER_TEST_DATABASE_URL in a fresh schema of its own (skipped, with the reason, when
the variable is unset). A schema per test instead of a database per test keeps it fast.
"""

import contextlib
import os
import secrets
import time
import urllib.parse

import pytest
from flask.testing import FlaskClient

from imgsmaller import accounts, create_app
from imgsmaller.db import close_pools, connect, connect_unpooled, database_of

TEST_DATABASE_URL = "IMGSMALLER_TEST_DATABASE_URL"
NO_POSTGRES = (f"PostgreSQL tests need {TEST_DATABASE_URL}, e.g. postgresql://postgres@127.0.0.1:5432/test"
               " (.ci/run sets it when pg_isready answers)")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("engines") and "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def engine(request):
    """"sqlite" unless the test is marked `engines` (then each of "sqlite" and "postgresql")."""
    return getattr(request, "param", "sqlite")


def postgres_url():
    """The test server's URL, or skip the test saying why."""
    url = os.environ.get(TEST_DATABASE_URL)
    if not url:
        pytest.skip(NO_POSTGRES)
    return url


def with_search_path(url, schema):
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@contextlib.contextmanager
def fresh_schema(url):
    """A URL of `url`'s database whose tables live in a new, empty schema, dropped afterwards."""
    import psycopg

    schema = "test_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        scoped = with_search_path(url, schema)
        try:
            yield scoped
        finally:
            close_pools(scoped)
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def own_connection(target):
    """A connection of its own, outside the process's pool (as another process would have)."""
    return connect_unpooled(target)


@pytest.fixture
def database_url(engine):
    """None on SQLite; on PostgreSQL a URL with a fresh schema (DATABASE_URL for the app)."""
    if engine == "sqlite":
        yield None
        return
    with fresh_schema(postgres_url()) as url:
        yield url


class BufferedClient(FlaskClient):
    """Reads streamed responses (downloads) to the end and closes them, as a real server does."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def build_app(tmp_path, **overrides):
    """The real app on a fresh instance under tmp_path (DATABASE_URL=... for PostgreSQL); call shut_down(app) after."""
    app = create_app({
        "TESTING": True,
        "DATABASE": str(tmp_path / "imgsmaller.sqlite3"),
        "DATABASE_URL": None,
        "STORAGE_DIR": str(tmp_path / "storage"),
        "SECRET_KEY": "test-secret",
        "WORKERS": 2,
        "DAILY_LIMIT": 100,
        "CLEANUP_INTERVAL_S": 3600,
        # Jobs run in the request's thread, so a 202 means the result is ready; tests of
        # the pool itself (concurrency, recovery) pass INLINE_JOBS=False.
        "INLINE_JOBS": True,
        **overrides,
    })
    app.test_client_class = BufferedClient
    return app


def shut_down(app):
    app.extensions["imgsmaller.jobs"].shutdown()


@pytest.fixture
def app(tmp_path, request, database_url):
    """The app; jobs run inline unless the test is marked `pool` (then the real thread pool runs them)."""
    app = build_app(tmp_path, DATABASE_URL=database_url, INLINE_JOBS=request.node.get_closest_marker("pool") is None)
    yield app
    shut_down(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def cli(app):
    return app.test_cli_runner()


@pytest.fixture
def db(app):
    connection = connect(database_of(app.config))
    yield connection
    connection.close()


@pytest.fixture
def make_user(app):
    """make_user(email=..., allowed_domain=..., daily_limit=..., password=...) -> {"id", "email", "key"}."""
    counter = iter(range(1, 1_000_000))

    def make(email=None, **options):
        email = email or f"user{next(counter)}@example.org"
        db = connect(database_of(app.config))
        try:
            user_id, key = accounts.create_user(db, email, **options)
        finally:
            db.close()
        return {"id": user_id, "email": email, "key": key}

    return make


@pytest.fixture
def user(make_user):
    return make_user()


def wait_for_result(client, progress_key, timeout=60):
    """Poll /result until the job is no longer processing; return the JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/result/{progress_key}")
        assert response.status_code in (200, 410), response.get_json()
        body = response.get_json()
        if body.get("status") != "processing":
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {progress_key} still processing after {timeout}s")
