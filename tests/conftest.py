"""Fixtures: the real app on a temporary instance (SQLite file and storage folder under tmp_path)."""

import time

import pytest
from flask.testing import FlaskClient

from imgsmaller import accounts, create_app
from imgsmaller.db import connect


class BufferedClient(FlaskClient):
    """Reads streamed responses (downloads) to the end and closes them, as a real server does."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def build_app(tmp_path, **overrides):
    """The real app on a fresh instance under tmp_path; call shut_down(app) after."""
    app = create_app({
        "TESTING": True,
        "DATABASE": str(tmp_path / "imgsmaller.sqlite3"),
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
