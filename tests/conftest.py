"""Fixtures: the real app on a temporary instance (SQLite file and storage folder under tmp_path)."""

import pytest

from imgsmaller import accounts
from imgsmaller.db import connect

from helpers import build_app, shut_down

pytest_plugins = ["fakenet"]  # the fake internet's fixtures (origin, dns, net, ...) for every module


@pytest.fixture
def app(tmp_path, request):
    """The app; jobs run inline unless the test is marked `pool` (then the real thread pool runs them)."""
    app = build_app(tmp_path, INLINE_JOBS=request.node.get_closest_marker("pool") is None)
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
    connection = connect(app.config["DATABASE"])
    yield connection
    connection.close()


@pytest.fixture
def make_user(app):
    """make_user(email=..., allowed_domain=..., daily_limit=..., password=...) -> {"id", "email", "key"}."""
    counter = iter(range(1, 1_000_000))

    def make(email=None, **options):
        email = email or f"user{next(counter)}@example.org"
        db = connect(app.config["DATABASE"])
        try:
            user_id, key = accounts.create_user(db, email, **options)
        finally:
            db.close()
        return {"id": user_id, "email": email, "key": key}

    return make


@pytest.fixture
def user(make_user):
    return make_user()
