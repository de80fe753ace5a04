"""The job pool's slots: each job in a child process that a timeout kills, a crash that never hangs a
slot, graceful shutdown, WORKERS=0, and an idle slot picking up a job queued by another process."""

import io
import os
import time

import pytest
from job_functions import scripted

from imgsmaller import accounts, job_store
from imgsmaller.db import connect, to_iso, transaction, utcnow

from helpers import build_app, fresh_schema, postgres_url, shut_down, wait_for_result
from images import image_bytes


def queue_job(app, data):
    """A queued job with `data` as its input, inserted as another process would (no submit): the input is
    written inside the transaction that inserts the row, as the service does, so no slot can claim the job
    before its input exists (it once did, and the job failed for want of its file)."""
    runner = app.extensions["imgsmaller.jobs"]
    db = connect(app.config["DATABASE"])
    try:
        with transaction(db):
            job_id = db.execute(
                "INSERT INTO jobs (progress_key, download_token, output, original_format, original_bytes,"
                " created_at, expires_at) VALUES (hex(randomblob(16)), hex(randomblob(16)), 'png', 'png', 10, ?,"
                " '2999-01-01T00:00:00Z') RETURNING id", (to_iso(utcnow()),)).fetchone()["id"]
            path = runner.storage.input_path(job_id)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(data)
    finally:
        db.close()
    return job_id


def row(app, job_id):
    db = connect(app.config["DATABASE"])
    try:
        return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()


def wait_for(app, job_id, statuses=("done", "failed"), timeout=60):
    deadline = time.monotonic() + timeout
    while (job := row(app, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} is still {job['status']}"
        time.sleep(0.05)
    return job


def read_pid(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return int(path.read_text())


def gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def pool_app(tmp_path):
    apps = []

    def make(**settings):
        app = build_app(tmp_path, INLINE_JOBS=False, WORKERS=1, JOB_FUNCTION=scripted, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        shut_down(app)


@pytest.mark.slow
def test_a_job_over_the_timeout_is_killed_in_its_child_and_the_slot_runs_the_next(pool_app, tmp_path):
    app = pool_app(JOB_TIMEOUT_S=1)
    slow = queue_job(app, f"PID:{tmp_path / 'pid'}".encode())
    quick = queue_job(app, image_bytes())
    app.extensions["imgsmaller.jobs"].start()
    pid = read_pid(tmp_path / "pid")
    assert pid != os.getpid()  # the work runs in a child process ...
    assert wait_for(app, slow)["message"] == job_store.TIMEOUT_MESSAGE
    assert gone(pid)  # ... that the timeout really stopped (a thread would run on)
    assert wait_for(app, quick)["status"] == "done"


@pytest.mark.slow
def test_a_child_that_dies_mid_job_never_hangs_the_slot_and_the_job_fails_after_max_attempts(pool_app):
    app = pool_app()
    doomed = queue_job(app, b"DIE")
    quick = queue_job(app, image_bytes())
    app.extensions["imgsmaller.jobs"].start()
    job = wait_for(app, doomed)
    assert (job["status"], job["message"], job["attempts"]) == ("failed", job_store.FAILED_MESSAGE,
                                                                job_store.MAX_ATTEMPTS)
    assert wait_for(app, quick)["status"] == "done"


@pytest.mark.slow
def test_shutdown_puts_a_job_running_past_the_grace_period_back_in_the_queue(pool_app, tmp_path):
    app = pool_app(SHUTDOWN_GRACE_S=0)
    job_id = queue_job(app, f"PID:{tmp_path / 'pid'}".encode())
    runner = app.extensions["imgsmaller.jobs"]
    runner.start()
    pid = read_pid(tmp_path / "pid")
    runner.shutdown()
    job = row(app, job_id)
    assert (job["status"], job["attempts"], job["claimed_by"]) == ("queued", 0, None)
    assert gone(pid)


@pytest.mark.slow
def test_shutdown_lets_a_running_job_finish_within_the_grace_period(pool_app):
    app = pool_app(SHUTDOWN_GRACE_S=60)
    job_id = queue_job(app, image_bytes("png", 600, 400))
    runner = app.extensions["imgsmaller.jobs"]
    runner.start()
    wait_for(app, job_id, statuses=("running", "done"))
    runner.shutdown()
    assert row(app, job_id)["status"] == "done"


@pytest.mark.slow
def test_an_idle_slot_picks_up_a_job_queued_by_another_process_within_a_second(pool_app):
    app = pool_app()
    runner = app.extensions["imgsmaller.jobs"]
    runner.start()
    time.sleep(1)  # idle: the start-up run found nothing
    queued = time.monotonic()
    job_id = queue_job(app, image_bytes())
    job = wait_for(app, job_id, statuses=("running", "done"))
    waited = time.monotonic() - queued
    print(f"picked up after {waited:.2f} s")
    assert waited < 5, job  # the poll is every 0.5 s; the slack is for a loaded machine
    assert wait_for(app, job_id)["status"] == "done"


@pytest.mark.slow
def test_on_postgresql_an_idle_slot_wakes_at_the_notify_of_a_job_another_node_queued(tmp_path, monkeypatch):
    """Both polls an hour apart: only the NOTIFY sent with the web node's insert can wake the worker."""
    monkeypatch.setattr(job_store, "POLL_S", 3600)
    monkeypatch.setattr(job_store, "FALLBACK_POLL_S", 3600)
    with fresh_schema(postgres_url()) as url:
        web = build_app(tmp_path, DATABASE_URL=url, INLINE_JOBS=False, WORKERS=0)
        worker = build_app(tmp_path, DATABASE_URL=url, INLINE_JOBS=False, WORKERS=1, JOB_FUNCTION=scripted)
        runner = worker.extensions["imgsmaller.jobs"]
        try:
            runner.start()
            deadline = time.monotonic() + 30
            while not (runner._listener and runner._listener.listening):
                assert time.monotonic() < deadline, "the worker never listened"
                time.sleep(0.05)
            db = connect(url)
            try:
                _, key = accounts.create_user(db, "notify@example.org")
            finally:
                db.close()
            client = web.test_client()
            for _ in range(2):  # the first when the slot starts (its child takes seconds); the second to an idle slot
                response = client.post("/api/v1/compress", headers={"X-API-Key": key},
                                       data={"file": (io.BytesIO(image_bytes()), "a.png")})
                assert response.status_code == 202, response.get_json()
                assert wait_for_result(client, response.get_json()["progress_key"])["status"] == "done"
                time.sleep(0.5)  # the slot is back asleep
        finally:
            shut_down(worker)
            shut_down(web)


def test_a_web_node_with_workers_0_runs_no_jobs_and_is_ready(tmp_path):
    app = build_app(tmp_path, INLINE_JOBS=False, WORKERS=0)
    try:
        client = app.test_client()
        assert client.get("/readyz").get_json()["checks"]["jobs"] == "ok"
        runner = app.extensions["imgsmaller.jobs"]
        job_id = queue_job(app, image_bytes())
        runner.submit(job_id)
        assert not runner.started and row(app, job_id)["status"] == "queued"
    finally:
        shut_down(app)


@pytest.mark.pool
def test_a_job_submitted_through_the_api_runs_in_the_real_pool(app, client, user):
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                           data={"file": (io.BytesIO(image_bytes()), "a.png"), "target_size": "2KB"})
    assert response.status_code == 202
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result["status"] == "done" and result["bytes"] <= 2048
