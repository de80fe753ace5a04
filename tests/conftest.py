"""Fixtures: the real app on a temporary instance (SQLite file and storage folder under tmp_path).

A module or test marked `engines` runs each test that uses the database (the `app`,
`database_url` or `engine` fixture) twice: on SQLite, and on PostgreSQL at
IMGSMALLER_TEST_DATABASE_URL in a fresh schema of its own (skipped, with the reason, when
the variable is unset). A schema per test instead of a database per test keeps it fast.
"""


import pytest

from imgsmaller import accounts
from imgsmaller.db import connect, database_of

from helpers import build_app, fresh_schema, postgres_url, shut_down


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("engines") and "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def engine(request):
    """"sqlite" unless the test is marked `engines` (then each of "sqlite" and "postgresql")."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(engine):
    """None on SQLite; on PostgreSQL a URL with a fresh schema (DATABASE_URL for the app)."""
    if engine == "sqlite":
        yield None
        return
    with fresh_schema(postgres_url()) as url:
        yield url


pytest_plugins = ["fakenet"]  # the fake internet's fixtures (origin, dns, net, ...) for every module


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
