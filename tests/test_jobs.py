"""The jobs table's protocol and storage: atomic claims, leases, fencing, recovery, failures, expiry, full storage."""

import os
import secrets

import pytest

from imgsmaller import engine, job_store, maintenance
from imgsmaller.db import connect, database_of, dialect, to_iso, utcnow

from helpers import post_file, wait_for_result
from images import image_bytes

pytestmark = pytest.mark.engines  # every test here runs on SQLite and on PostgreSQL


def insert_job(db, status="queued", claimed_by=None, attempts=0):
    now = to_iso(utcnow())
    return db.execute(
        "INSERT INTO jobs (progress_key, download_token, status, output, claimed_by, attempts,"
        " original_format, original_bytes, created_at, expires_at)"
        " VALUES (?, ?, ?, 'png', ?, ?, 'png', 10, ?, '2999-01-01T00:00:00Z')"
        " RETURNING id", (secrets.token_hex(16), secrets.token_hex(16), status, claimed_by, attempts, now),
    ).fetchone()["id"]


def job_row(db, job_id):
    return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def test_a_job_is_claimed_by_exactly_one_process(db, app):
    job_id = insert_job(db)
    other = connect(database_of(app.config))
    try:
        first = job_store.claim_job(db, job_id, "process-a")
        second = job_store.claim_job(other, job_id, "process-b")
    finally:
        other.close()
    assert first is not None and second is None
    assert job_row(db, job_id)["claimed_by"] == "process-a"


def expire_lease(db, job_id):
    db.execute("UPDATE jobs SET lease_expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (job_id,))


def write_input(runner, job_id, data):
    path = runner.storage.input_path(job_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


@pytest.mark.pool
def test_a_job_whose_worker_died_is_queued_again_once_its_lease_passes_and_finishes(app, db):
    runner = app.extensions["imgsmaller.jobs"]
    job_id = insert_job(db, status="running", claimed_by="dead", attempts=1)
    expire_lease(db, job_id)
    write_input(runner, job_id, image_bytes())
    runner.start()  # its start-up maintenance runs the reaper
    result = wait_for_result(app.test_client(), job_row(db, job_id)["progress_key"])
    assert result["status"] == "done"
    assert job_row(db, job_id)["attempts"] == 2


def test_a_job_that_keeps_losing_its_worker_is_failed_not_retried_forever(app, db):
    job_id = insert_job(db, status="running", claimed_by="gone", attempts=job_store.MAX_ATTEMPTS)
    expire_lease(db, job_id)
    assert job_store.requeue_expired_leases(db) == ([], [job_id])
    row = job_row(db, job_id)
    assert row["status"] == "failed" and row["message"] == job_store.FAILED_MESSAGE


def test_a_running_job_with_a_live_lease_is_left_alone_and_reaping_twice_changes_nothing(app, db):
    live = job_store.claim_job(db, insert_job(db), "alive", lease_s=60)["id"]
    dead = insert_job(db, status="running", claimed_by="dead", attempts=1)
    expire_lease(db, dead)
    assert job_store.requeue_expired_leases(db) == ([dead], [])
    assert job_store.requeue_expired_leases(db) == ([], [])
    assert job_row(db, live)["status"] == "running" and job_row(db, dead)["status"] == "queued"


def test_a_claim_leases_the_job_on_the_database_clock(app, db):
    job = job_store.claim_next_job(db, "me", lease_s=60)
    assert job is None
    job_id = insert_job(db)
    job = job_store.claim_next_job(db, "me", lease_s=60)
    clock = dialect(db)
    now, later = db.execute(f"SELECT {clock.now_iso}, {clock.now_plus_iso}", (61,)).fetchone()
    assert job["id"] == job_id and job["attempts"] == 1 and now < job["lease_expires_at"] <= later
    assert job_store.claim_next_job(db, "other", lease_s=60) is None


class Done:
    data, format, width, height, quality_score, encodes = b"x", "png", 1, 1, None, 1


def test_a_late_finish_from_an_expired_lease_never_overwrites_the_retry(app, db):
    job_id = insert_job(db)
    first = job_store.claim_job(db, job_id, "worker-a")
    expire_lease(db, job_id)
    job_store.requeue_expired_leases(db)
    second = job_store.claim_job(db, job_id, "worker-b")
    assert second["attempts"] == 2
    assert job_store.renew_lease(db, first, 60) is False
    assert job_store.finish_job(db, first, Done) is False
    assert job_store.fail_job(db, first, "late failure") is False
    assert job_row(db, job_id)["status"] == "running"
    assert job_store.finish_job(db, second, Done) is True
    assert job_row(db, job_id)["status"] == "done"


def test_a_released_job_goes_back_to_the_queue_without_counting_the_attempt(app, db):
    job = job_store.claim_job(db, insert_job(db), "me")
    assert job_store.release_job(db, job) is True
    row = job_row(db, job["id"])
    assert (row["status"], row["attempts"], row["claimed_by"], row["lease_expires_at"]) == ("queued", 0, None, None)
    assert job_store.release_job(db, job) is False  # fenced like a finish


def test_a_job_whose_process_died_is_retried_then_failed_after_max_attempts(app, db):
    job_id = insert_job(db)
    outcomes = []
    for _ in range(job_store.MAX_ATTEMPTS):
        outcomes.append(job_store.retry_or_fail_job(db, job_store.claim_job(db, job_id, "me")))
    assert outcomes == ["queued"] * (job_store.MAX_ATTEMPTS - 1) + ["failed"]
    assert job_row(db, job_id)["message"] == job_store.FAILED_MESSAGE


def test_a_version_2_database_gets_the_lease_column(tmp_path):
    from imgsmaller import db as database

    path = str(tmp_path / "old.sqlite3")
    database.init_db(path)
    old = connect(path)
    job_id = insert_job(old, status="running", claimed_by="old-code", attempts=1)
    old.executescript("ALTER TABLE jobs DROP COLUMN lease_expires_at; PRAGMA user_version = 2;")
    old.close()
    database.init_db(path)
    upgraded = connect(path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION
        assert job_store.requeue_expired_leases(upgraded) == ([job_id], [])  # left by the old code: run again
    finally:
        upgraded.close()


def test_an_engine_crash_fails_the_job_with_a_generic_message(client, user, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail at /srv/path")

    monkeypatch.setattr(engine, "compress", explode)
    response = post_file(client, user["key"], image_bytes(), "a.png")
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result == {"status": "failed", "message": job_store.FAILED_MESSAGE}


def test_an_unreachable_target_fails_the_job_with_its_message(client, user, monkeypatch):
    from imgsmaller.errors import TargetUnreachableError

    def unreachable(*args, **kwargs):
        raise TargetUnreachableError()

    monkeypatch.setattr(engine, "compress", unreachable)
    result = wait_for_result(client, post_file(client, user["key"], image_bytes(), "a.png").get_json()["progress_key"])
    assert result == {"status": "failed", "message": TargetUnreachableError.message}


def break_storage(app):
    """Make the storage folder unusable: its tmp/ becomes a plain file (works even as root)."""
    tmp = os.path.join(app.config["STORAGE_DIR"], "tmp")
    os.makedirs(tmp, exist_ok=True)
    os.rmdir(tmp)
    with open(tmp, "w") as file:
        file.write("not a folder")
    return lambda: os.remove(tmp)


def test_unwritable_storage_answers_503_leaves_nothing_and_recovers(app, client, user, db):
    repair = break_storage(app)
    response = post_file(client, user["key"], image_bytes(), "a.png")
    assert response.status_code == 503
    assert "storage" in response.get_json()["message"].lower()
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"] == 100
    repair()
    assert post_file(client, user["key"], image_bytes(), "a.png").status_code == 202  # no restart needed


def test_disk_full_while_saving_a_result_fails_the_job_and_leaves_no_partial_file(app, client, user, monkeypatch):
    runner = app.extensions["imgsmaller.jobs"]
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_full_after_input(fd):
        calls["n"] += 1
        if calls["n"] > 1:  # the first fsync is the request's input; the job's result hits a full disk
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_full_after_input)
    result = wait_for_result(client, post_file(client, user["key"], image_bytes(), "a.png").get_json()["progress_key"])
    assert result["status"] == "failed" and "storage" in result["message"].lower()
    assert os.listdir(os.path.join(runner.storage.root, "tmp")) == []
    assert not os.path.exists(runner.storage.result_path(1))


def test_expire_results_deletes_files_of_expired_jobs_only(app, client, user, db):
    runner = app.extensions["imgsmaller.jobs"]
    old = wait_for_result(client, post_file(client, user["key"], image_bytes(), "a.png").get_json()["progress_key"])
    new = wait_for_result(client, post_file(client, user["key"], image_bytes(), "a.png").get_json()["progress_key"])
    db.execute("UPDATE jobs SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (old["image_id"],))
    assert maintenance.expire_results(db, runner.storage, utcnow()) == 1
    assert not os.path.exists(runner.storage.result_path(old["image_id"]))
    assert os.path.exists(runner.storage.result_path(new["image_id"]))
    assert job_row(db, old["image_id"])["files_deleted"] == 1
    assert maintenance.expire_results(db, runner.storage, utcnow()) == 0


def test_a_job_taken_over_by_another_process_is_not_finished_twice(app, db):
    job_id = insert_job(db)
    job = job_store.claim_job(db, job_id, "first")
    db.execute("UPDATE jobs SET claimed_by = 'second' WHERE id = ?", (job_id,))
    assert job_store.fail_job(db, job, "late failure") is False
    assert job_row(db, job_id)["status"] == "running"
