"""The operations surface: /healthz, /readyz, /metrics, request ids and `flask backup`, through the real app.

The last test runs them against a real waitress server in a subprocess, as a load
balancer and Prometheus would see them.
"""

import io
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from imgsmaller import create_app, engine, job_store
from imgsmaller.db import SCHEMA_VERSION, transaction, utcnow
from imgsmaller.params import Choices

from helpers import free_port
from images import image_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def make_app(tmp_path, **overrides):
    """The real app on tmp_path with `overrides` (the conftest `app` fixture has fixed settings)."""
    return create_app({
        "TESTING": True,
        "DATABASE": str(tmp_path / "imgsmaller.sqlite3"),
        "STORAGE_DIR": str(tmp_path / "storage"),
        "SECRET_KEY": "test-secret",
        "WORKERS": 1,
        "CLEANUP_INTERVAL_S": 3600,
        "INLINE_JOBS": True,
        **overrides,
    })


@pytest.fixture
def custom_app(tmp_path):
    apps = []

    def make(**overrides):
        apps.append(make_app(tmp_path, **overrides))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["imgsmaller.jobs"].shutdown()


def compress(client, key, data, filename="holiday-photo.png", **fields):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data), filename), **fields})


def scrape(client, **options):
    response = client.get("/metrics", **options)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def sample(text, name, **labels):
    """The value of the sample `name` with exactly these labels in a scrape, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def label_values(text, label):
    return {s.labels[label] for family in text_string_to_metric_families(text)
            for s in family.samples if label in s.labels}


# -- /healthz ------------------------------------------------------------------------


def test_healthz_answers_ok_without_a_key(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.pool
def test_healthz_touches_neither_the_database_nor_the_job_pool(app, client):
    with open(app.config["DATABASE"], "r+b") as file:  # the database is now unreadable
        file.write(b"not a database" * 10)
    assert client.get("/healthz").status_code == 200
    assert not app.extensions["imgsmaller.jobs"].started  # starting the pool would wait on the database
    assert client.get("/readyz").status_code == 503


# -- /readyz -------------------------------------------------------------------------


def test_readyz_is_ok_when_database_schema_storage_and_jobs_are(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ok", "checks": {
        "database": "ok", "schema": "ok", "storage": "ok", "jobs": "ok"}}


@pytest.mark.pool
def test_readyz_counts_the_real_pool_alive_once_it_runs(app, client):
    assert client.get("/readyz").status_code == 200
    assert app.extensions["imgsmaller.jobs"].started


@pytest.mark.pool
def test_readyz_names_the_jobs_check_when_the_maintenance_thread_died(app, client):
    assert client.get("/readyz").status_code == 200
    runner = app.extensions["imgsmaller.jobs"]
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    runner._maintenance = dead  # what a thread killed by an unexpected BaseException leaves behind
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "schema": "ok", "storage": "ok", "jobs": "failed"}
    assert body["message"].startswith("Not ready: jobs:")


def test_readyz_names_storage_when_no_file_can_be_written(custom_app, tmp_path):
    # A folder under a regular file can never be created (unlike chmod, this holds for root too).
    (tmp_path / "plain-file").write_text("x")
    app = custom_app(STORAGE_DIR=str(tmp_path / "plain-file" / "storage"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"database": "ok", "schema": "ok", "storage": "failed", "jobs": "ok"}
    assert "storage" in body["message"] and "plain-file" not in body["message"]  # no paths to strangers


@pytest.mark.parametrize("version, words", [(SCHEMA_VERSION + 1, "newer than this code"),
                                            (SCHEMA_VERSION - 1, "init-db")])
def test_readyz_names_the_schema_when_the_database_is_at_another_version(app, client, db, version, words):
    db.execute(f"PRAGMA user_version = {version}")  # e.g. a newer release migrated the shared database
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["schema"] == "failed" and body["checks"]["database"] == "ok"
    assert body["message"].startswith("Not ready: schema:") and words in body["message"]


def test_readyz_names_the_database_when_it_does_not_answer(app, client):
    with open(app.config["DATABASE"], "r+b") as file:
        file.write(b"not a database" * 10)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["database"] == "failed" and body["checks"]["schema"] == "unknown"
    assert "database" in body["message"] and app.config["DATABASE"] not in body["message"]


# -- /metrics ------------------------------------------------------------------------


def test_metrics_count_requests_jobs_bytes_and_encodes_without_keys_emails_or_file_names(client, make_user):
    user = make_user(email="alice@example.org")
    data = image_bytes("png", 80, 60)
    response = compress(client, user["key"], data, output="webp", target_size="auto")
    assert response.status_code == 202
    progress_key = response.get_json()["progress_key"]
    result = client.get(f"/result/{progress_key}").get_json()
    assert result["status"] == "done"

    text = scrape(client)
    assert sample(text, "imgsmaller_jobs_total", format="webp", mode="auto", outcome="done") == 1
    assert sample(text, "imgsmaller_job_duration_seconds_count", format="webp", mode="auto", outcome="done") == 1
    assert sample(text, "imgsmaller_job_input_bytes_total", format="webp") == len(data)
    assert sample(text, "imgsmaller_job_output_bytes_total", format="webp") == result["bytes"]
    assert sample(text, "imgsmaller_job_encodes_count", format="webp", mode="auto") == 1
    assert sample(text, "imgsmaller_job_encodes_sum", format="webp", mode="auto") >= 1
    assert sample(text, "imgsmaller_http_requests_total",
                  method="POST", route="/api/v1/compress", status="202") == 1
    assert sample(text, "imgsmaller_http_requests_total",
                  method="GET", route="/result/<progress_key>", status="200") == 1
    assert sample(text, "imgsmaller_http_request_duration_seconds_count",
                  method="POST", route="/api/v1/compress") == 1
    for secret in (user["key"], "alice", "holiday-photo", progress_key):
        assert secret not in text


def test_a_target_job_that_fails_is_counted_with_its_requested_format(app, client, user):
    os.makedirs(app.config["STORAGE_DIR"])
    with open(os.path.join(app.config["STORAGE_DIR"], "results"), "w") as file:  # results cannot be stored
        file.write("x")
    response = compress(client, user["key"], image_bytes("png"), target_size="5KB")
    assert response.status_code == 202
    assert client.get(f"/result/{response.get_json()['progress_key']}").get_json()["status"] == "failed"
    text = scrape(client)
    assert sample(text, "imgsmaller_jobs_total", format="png", mode="target", outcome="failed") == 1
    assert sample(text, "imgsmaller_jobs_total", format="png", mode="target", outcome="done") is None
    assert sample(text, "imgsmaller_job_duration_seconds_count", format="png", mode="target", outcome="failed") == 1


def test_quota_refusals_are_counted_and_log_in_throttling_is_not(client, make_user):
    user = make_user(daily_limit=0)
    assert compress(client, user["key"], image_bytes("png")).status_code == 429
    text = scrape(client)
    assert sample(text, "imgsmaller_quota_refusals_total", route="/api/v1/compress") == 1
    assert sample(text, "imgsmaller_http_requests_total", method="POST", route="/api/v1/compress",
                  status="429") == 1


@pytest.mark.parametrize("domain, url, reason", [
    (None, "https://example.com/a.png", "DomainNotSetError"),
    ("example.com", "https://elsewhere.test/a.png", "DomainNotAllowedError"),
    ("example.com", "ftp://example.com/a.png", "FetchError"),
])
def test_file_url_refusals_are_counted_by_reason(client, make_user, domain, url, reason):
    user = make_user(allowed_domain=domain)
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]}, json={"file_url": url})
    assert response.status_code in (403, 422), response.get_json()
    text = scrape(client)
    assert sample(text, "imgsmaller_file_url_refusals_total", reason=reason) == 1
    assert label_values(text, "reason") == {reason}
    assert "elsewhere" not in text and "example.com" not in text


def test_queue_depth_and_running_jobs_are_read_from_the_database_at_scrape_time(client, db, user):
    text = scrape(client)
    assert sample(text, "imgsmaller_jobs_queued") == 0 and sample(text, "imgsmaller_jobs_running") == 0
    data = image_bytes("png")
    request = SimpleNamespace(probe=engine.probe(data, max_pixels=10**6), data=data, target_size=None,
                              output="png", filename=None, choices=Choices())
    with transaction(db):  # nothing submits these rows: they stay queued
        jobs = [job_store.insert_job(db, user_id=user["id"], request=request, ttl_hours=1, now=utcnow())
                for _ in range(3)]
    job_store.claim_job(db, jobs[0]["id"], "another-process")
    text = scrape(client)
    assert sample(text, "imgsmaller_jobs_queued") == 2
    assert sample(text, "imgsmaller_jobs_running") == 1


def test_routes_and_methods_in_labels_come_from_fixed_sets(client):
    client.get("/no/such/page/alice@example.org")
    client.open("/healthz", method="BREW")
    text = scrape(client)
    assert sample(text, "imgsmaller_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert sample(text, "imgsmaller_http_requests_total", method="other", route="<unmatched>", status="405") == 1
    assert "alice" not in text and "BREW" not in text


def test_without_a_token_metrics_answer_only_local_unrelayed_requests(client):
    assert client.get("/metrics").status_code == 200  # the test client connects from 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert remote.status_code == 403 and set(remote.get_json()) == {"message"}
    # A proxy on this machine relays outside clients from loopback: not a local scrape.
    relayed = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert relayed.status_code == 403


def test_with_a_token_metrics_need_it_from_anywhere(custom_app):
    client = custom_app(METRICS_TOKEN="s3cret-token").test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401 and set(response.get_json()) == {"message"}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/metrics", headers=good).status_code == 200
    assert client.get("/metrics", headers=good, environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200


def test_each_app_has_its_own_registry(custom_app, client):
    client.get("/healthz")
    other = custom_app().test_client()
    text = scrape(other)
    assert sample(text, "imgsmaller_http_requests_total", method="GET", route="/healthz", status="200") is None


# -- request ids ---------------------------------------------------------------------


@pytest.mark.parametrize("given, kept", [("lb-42.a_b", True), ("x" * 100, True), ("x" * 101, False),
                                         ("has space", False), ("", False), ("é", False), (None, False)])
def test_the_request_id_is_kept_when_safe_else_generated_and_always_returned(client, given, kept):
    headers = {} if given is None else {"X-Request-ID": given}
    for path in ("/healthz", "/no-such-page", "/api/v1/info"):  # a 200, a 404, a 401
        answered = client.get(path, headers=headers).headers.getlist("X-Request-ID")
        assert len(answered) == 1
        if kept:
            assert answered == [given]
        else:
            assert len(answered[0]) == 32 and int(answered[0], 16) >= 0


def test_generated_request_ids_differ(client):
    assert client.get("/healthz").headers["X-Request-ID"] != client.get("/healthz").headers["X-Request-ID"]


def test_the_job_is_logged_with_its_request_id(client, user, caplog):
    with caplog.at_level(logging.INFO, logger="imgsmaller"):
        response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"], "X-Request-ID": "req-77"},
                               data={"file": (io.BytesIO(image_bytes("png")), "a.png")})
        logging.getLogger("imgsmaller.test").info("after the request")
    assert response.status_code == 202
    queued = [r for r in caplog.records if "queued" in r.getMessage()]
    assert len(queued) == 1 and queued[0].getMessage().endswith("queued (request id req-77)")
    # Every record of the request carries the id, the pool's "done" line of an inline job included.
    done = [r for r in caplog.records if r.getMessage().startswith("Job ") and " done" in r.getMessage()]
    assert done and all(r.request_id == "req-77" for r in queued + done)
    assert caplog.records[-1].getMessage() == "after the request" and caplog.records[-1].request_id == "-"


# -- flask backup --------------------------------------------------------------------


def test_backup_copies_the_database_and_never_overwrites_without_force(cli, user, tmp_path):
    target = tmp_path / "backup.sqlite3"
    result = cli.invoke(args=["backup", str(target)])
    assert result.exit_code == 0, result.output
    assert "Backed up" in result.output
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("SELECT email FROM users").fetchall() == [(user["email"],)]
        assert copy.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        copy.close()

    target.write_bytes(b"keep me")
    refused = cli.invoke(args=["backup", str(target)])
    assert refused.exit_code != 0 and "--force" in refused.output
    assert target.read_bytes() == b"keep me"
    forced = cli.invoke(args=["backup", "--force", str(target)])
    assert forced.exit_code == 0, forced.output
    assert target.read_bytes().startswith(b"SQLite format 3\0")
    assert sorted(os.listdir(tmp_path)) == sorted(n for n in os.listdir(tmp_path) if ".imgsmaller-backup-" not in n)


def test_backup_into_a_missing_folder_is_one_line_not_a_traceback(cli, tmp_path):
    result = cli.invoke(args=["backup", str(tmp_path / "missing" / "b.sqlite3")])
    assert result.exit_code != 0
    assert "Cannot write" in result.output and "Traceback" not in result.output


# -- a real waitress server ----------------------------------------------------------


@pytest.mark.slow
def test_health_readiness_metrics_and_backup_on_a_real_waitress_server(tmp_path):
    env = {**os.environ,
           "IMGSMALLER_DATABASE": str(tmp_path / "imgsmaller.sqlite3"),
           "IMGSMALLER_STORAGE_DIR": str(tmp_path / "storage"),
           "IMGSMALLER_SECRET_KEY": "server-test",
           "IMGSMALLER_WORKERS": "1"}

    def flask(*args):
        result = subprocess.run([os.path.join(BIN, "flask"), "--app", "app", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    key = flask("create-user", "ops@example.org")
    url = f"http://127.0.0.1:{free_port()}"
    with open(tmp_path / "server.log", "ab") as log:
        server = subprocess.Popen([os.path.join(BIN, "waitress-serve"), "--listen", url[len("http://"):],
                                   "--threads", "4", "app:app"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(url + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

        response = requests.post(url + "/api/v1/compress", headers={"X-API-Key": key, "X-Request-ID": "batch-1"},
                                 files={"file": ("a.png", image_bytes("png"))}, data={"output": "jpeg"}, timeout=60)
        assert response.status_code == 202 and response.headers["X-Request-ID"] == "batch-1"
        progress_key = response.json()["progress_key"]
        deadline = time.monotonic() + 60
        while (status := requests.get(f"{url}/result/{progress_key}", timeout=10).json()["status"]) == "processing":
            assert time.monotonic() < deadline, "job never finished"
            time.sleep(0.05)
        assert status == "done"

        metrics = requests.get(url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
        text = metrics.text
        assert sample(text, "imgsmaller_jobs_total", format="jpeg", mode="auto", outcome="done") == 1
        assert sample(text, "imgsmaller_http_requests_total", method="GET", route="/healthz", status="200") >= 1
        assert sample(text, "imgsmaller_jobs_queued") == 0
        assert key not in text

        # A consistent copy while the server runs, then the server still answers.
        flask("backup", str(tmp_path / "copy.sqlite3"))
        copy = sqlite3.connect(tmp_path / "copy.sqlite3")
        try:
            assert copy.execute("SELECT status FROM jobs").fetchall() == [("done",)]
        finally:
            copy.close()
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        assert "queued (request id batch-1)" in (tmp_path / "server.log").read_text()
    finally:
        server.terminate()
        server.wait(10)


def test_request_metrics_keep_their_children_but_never_one_per_invented_method(tmp_path):
    from prometheus_client import generate_latest

    from imgsmaller.metrics import Metrics

    metrics = Metrics(str(tmp_path / "no.sqlite3"))
    for method in ("GET", "GET", "BREW", "PROPFIND", "brew"):
        metrics.observe_request(method, "/api/v1/info", 200, 0.002)
    metrics.observe_request("GET", None, 404, 0.001)
    assert len(metrics._request_children) == 3  # GET, other (every invented verb), the unmatched 404
    text = generate_latest(metrics.registry).decode()
    assert 'imgsmaller_http_requests_total{method="GET",route="/api/v1/info",status="200"} 2.0' in text
    assert 'imgsmaller_http_requests_total{method="other",route="/api/v1/info",status="200"} 3.0' in text
    assert 'imgsmaller_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'imgsmaller_http_request_duration_seconds_count{method="other",route="/api/v1/info"} 3.0' in text


def test_new_request_ids_are_distinct_uuid4s_in_each_thread_and_after_a_fork():
    import uuid

    from imgsmaller.request_id import choose_request_id

    ids = [choose_request_id(None) for _ in range(600)]  # more than one fetch of random bytes
    others = []
    worker = threading.Thread(target=lambda: others.extend(choose_request_id(None) for _ in range(300)))
    worker.start()
    worker.join()
    assert len(set(ids + others)) == 900
    assert all(uuid.UUID(hex=value).version == 4 for value in ids + others)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next one
        os.write(write, choose_request_id(None).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child_id != choose_request_id(None) and child_id not in ids
