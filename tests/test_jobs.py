"""The job pool and storage: atomic claims, recovery, failures, expiry, full or unwritable storage."""

import io
import os
import secrets

import pytest
from conftest import wait_for_result
from images import image_bytes

from imgsmaller import engine, job_store, pool
from imgsmaller.db import connect, database_of, to_iso, utcnow

pytestmark = pytest.mark.engines


def post_file(client, key, data=None):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data or image_bytes()), "a.png")})


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


@pytest.mark.pool
def test_jobs_of_a_dead_process_are_queued_again_and_finish(app, db):
    runner = app.extensions["imgsmaller.jobs"]
    db.execute("INSERT INTO workers (id, hostname, pid, heartbeat_at) VALUES ('dead', ?, 999999999, ?)",
               (runner.hostname, to_iso(utcnow())))
    job_id = insert_job(db, status="running", claimed_by="dead", attempts=1)
    input_path = runner.storage.input_path(job_id)
    os.makedirs(os.path.dirname(input_path), exist_ok=True)
    with open(input_path, "wb") as file:
        file.write(image_bytes())
    runner.start()
    runner.maintain()
    result = wait_for_result(app.test_client(), job_row(db, job_id)["progress_key"])
    assert result["status"] == "done"
    assert job_row(db, job_id)["attempts"] == 2
    assert db.execute("SELECT count(*) FROM workers WHERE id = 'dead'").fetchone()[0] == 0


def test_a_job_that_keeps_killing_its_process_is_failed_not_retried_forever(app, db):
    job_id = insert_job(db, status="running", claimed_by="gone", attempts=job_store.MAX_ATTEMPTS)
    pool.requeue_orphaned_jobs(db, "host", "me")
    row = job_row(db, job_id)
    assert row["status"] == "failed" and row["message"] == job_store.FAILED_MESSAGE


def test_a_running_job_of_a_live_process_is_left_alone(app, db):
    db.execute("INSERT INTO workers (id, hostname, pid, heartbeat_at) VALUES ('alive', 'h', ?, ?)",
               (os.getppid(), to_iso(utcnow())))
    job_id = insert_job(db, status="running", claimed_by="alive", attempts=1)
    pool.requeue_orphaned_jobs(db, "h", "me")
    assert job_row(db, job_id)["status"] == "running"


def test_an_engine_crash_fails_the_job_with_a_generic_message(client, user, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail at /srv/path")

    monkeypatch.setattr(engine, "compress", explode)
    response = post_file(client, user["key"])
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result == {"status": "failed", "message": job_store.FAILED_MESSAGE}


def test_an_unreachable_target_fails_the_job_with_its_message(client, user, monkeypatch):
    from imgsmaller.errors import TargetUnreachableError

    def unreachable(*args, **kwargs):
        raise TargetUnreachableError()

    monkeypatch.setattr(engine, "compress", unreachable)
    result = wait_for_result(client, post_file(client, user["key"]).get_json()["progress_key"])
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
    response = post_file(client, user["key"])
    assert response.status_code == 503
    assert "storage" in response.get_json()["message"].lower()
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"] == 100
    repair()
    assert post_file(client, user["key"]).status_code == 202  # no restart needed


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
    result = wait_for_result(client, post_file(client, user["key"]).get_json()["progress_key"])
    assert result["status"] == "failed" and "storage" in result["message"].lower()
    assert os.listdir(os.path.join(runner.storage.root, "tmp")) == []
    assert not os.path.exists(runner.storage.result_path(1))


def test_expire_results_deletes_files_of_expired_jobs_only(app, client, user, db):
    runner = app.extensions["imgsmaller.jobs"]
    old = wait_for_result(client, post_file(client, user["key"]).get_json()["progress_key"])
    new = wait_for_result(client, post_file(client, user["key"]).get_json()["progress_key"])
    db.execute("UPDATE jobs SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (old["image_id"],))
    assert pool.expire_results(db, runner.storage, utcnow()) == 1
    assert not os.path.exists(runner.storage.result_path(old["image_id"]))
    assert os.path.exists(runner.storage.result_path(new["image_id"]))
    assert job_row(db, old["image_id"])["files_deleted"] == 1
    assert pool.expire_results(db, runner.storage, utcnow()) == 0


def test_an_overlong_job_is_failed_and_its_late_result_dropped(app, db):
    runner = app.extensions["imgsmaller.jobs"]
    job_id = insert_job(db)
    job = job_store.claim_job(db, job_id, runner.instance_id)
    db.execute("UPDATE jobs SET started_at = '2000-01-01T00:00:00Z' WHERE id = ?", (job_id,))
    assert job_store.fail_overlong_jobs(db, utcnow()) == 1
    assert job_row(db, job_id)["message"] == job_store.TIMEOUT_MESSAGE

    class LateResult:
        data, format, width, height, quality_score, encodes = b"x", "png", 1, 1, None, 1

    assert job_store.finish_job(db, job, LateResult) is False
    assert job_row(db, job_id)["status"] == "failed"


def test_a_job_taken_over_by_another_process_is_not_finished_twice(app, db):
    job_id = insert_job(db)
    job = job_store.claim_job(db, job_id, "first")
    db.execute("UPDATE jobs SET claimed_by = 'second' WHERE id = ?", (job_id,))
    assert job_store.fail_job(db, job, "late failure") is False
    assert job_row(db, job_id)["status"] == "running"
