"""Helpers shared by the test modules: the app on a temporary instance, polling, ports, error checks.

Test modules import these by name; conftest.py builds its fixtures from them.
No test module imports another test module or conftest.
"""

import contextlib
import io
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from flask.testing import FlaskClient

from imgsmaller import create_app
from imgsmaller.db import close_pools, connect_unpooled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TEST_DATABASE_URL = "IMGSMALLER_TEST_DATABASE_URL"
NO_POSTGRES = (f"PostgreSQL tests need {TEST_DATABASE_URL}, e.g. postgresql://postgres@127.0.0.1:5432/test"
               " (.ci/run sets it when pg_isready answers)")


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
        "DATABASE_URL": None,  # SQLite; the `engines` fixtures pass a PostgreSQL URL
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


def post_file(client, key, data, filename="photo.png", **fields):
    """POST /api/v1/compress as multipart/form-data with the key in the header."""
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data), filename), **fields})


def assert_error(response, status):
    """The contract's error answer: that status, JSON `{"message": ...}` only, no traceback."""
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"message"} and body["message"]
    assert "Traceback" not in body["message"]
    return body["message"]


def run_in_threads(target, count, timeout=30):
    """`target()` in `count` threads at once; waits for them (each at most `timeout` seconds)."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- PostgreSQL for the tests marked `engines` (conftest.py) -----------------------------


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


class AppProcess:
    """The app as a real process on an instance under `folder`: `flask --app app ...` commands, and one
    long-running process (a server, a worker) started, watched and stopped. `base_env` comes before the
    instance's variables; settings (IMGSMALLER_<name>) after them."""

    def __init__(self, folder, name="server", secret="process-test", base_env=None, **settings):
        self.database = str(folder / "imgsmaller.sqlite3")
        self.env = {**os.environ, **(base_env or {}), "IMGSMALLER_DATABASE": self.database,
                    "IMGSMALLER_STORAGE_DIR": str(folder / "storage"), "IMGSMALLER_SECRET_KEY": secret,
                    **{f"IMGSMALLER_{k}": str(v) for k, v in settings.items()}}
        self.log = folder / f"{name}.log"
        self.process = None

    def flask(self, *args):
        """Run a `flask --app app` command to its end; its last line of output (e.g. a new API key)."""
        result = subprocess.run([os.path.join(BIN, "flask"), "--app", "app", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def launch(self, argv, ready, timeout=60):
        """Start `argv` (output to the log) and wait until `ready()`; it must not exit meanwhile."""
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, "exited: " + self.log.read_text()
            assert time.monotonic() < deadline, "did not start: " + self.log.read_text()
            time.sleep(0.1)
        return self

    def kill(self):
        self.process.kill()
        self.process.wait(10)

    def stop(self):
        """SIGTERM, and SIGKILL if it is still there after 10 s."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def port_open(port):
    """A TCP connect to 127.0.0.1:port succeeds (no request reaches the app)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def answers(url):
    """The app at `url` answers GET /api/v1/info (with anything)."""
    import requests

    try:
        requests.get(url + "/api/v1/info", timeout=1)
        return True
    except requests.ConnectionError:
        return False
