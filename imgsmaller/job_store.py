"""The `jobs` and `workers` tables: every statement that reads or writes them, and a job's public view.

Imports only the stdlib and db.py. The job pool, the API, the pages and the CLI
all go through these functions; no other module writes SQL on these tables.
Statements that decide a write run in a BEGIN IMMEDIATE transaction, so two
processes sharing the database never claim or finish the same job twice.
A claim is a lease on the database clock (`lease_expires_at`), renewed while the job
runs; finishing is fenced on the attempt, so at-least-once runs give one visible result.
"""

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from .db import POSTGRESQL, dialect, to_iso, transaction, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of a job whose worker died (or lost its lease): then it is failed, not retried forever
FAILED_MESSAGE = "The image could not be processed."
TIMEOUT_MESSAGE = "The image took too long to process."
PUBLIC_STATUS = {"queued": "processing", "running": "processing", "done": "done", "failed": "failed"}


# -- what a person sees of a job ------------------------------------------------


def has_expired(job, now):
    """True once the job's files were deleted or its expiry time has passed."""
    return bool(job["files_deleted"]) or job["expires_at"] <= to_iso(now)


@dataclass(frozen=True)
class JobView:
    """A job row as the API and the pages show it: one rule for status, expiry and saving."""

    job: object
    status: str  # processing, done or failed
    expired: bool  # a done job whose result is gone
    saved_percent: float | None

    @property
    def downloadable(self):
        return self.status == "done" and not self.expired

    def answer(self, base_url):
        """The /result answer for any status (the webhook's body too); links start with `base_url`."""
        if self.status == "processing":
            return {"status": "processing"}
        if self.status == "failed":
            return {"status": "failed", "message": self.job["message"]}
        return self.result_body(f"{base_url}/download/{self.job['id']}?token={self.job['download_token']}")

    def result_body(self, download_url):
        """The body of a done /result answer."""
        job = self.job
        return {
            "status": "done",
            "image_id": job["id"],
            "download": download_url,
            "bytes": job["bytes"],
            "format": job["format"],
            "width": job["width"],
            "height": job["height"],
            "original_bytes": job["original_bytes"],
            "original_format": job["original_format"],
            "original_width": job["original_width"],
            "original_height": job["original_height"],
            "saved_percent": self.saved_percent,
            "quality_score": job["quality_score"],
            "expires_at": job["expires_at"],
            "warnings": json.loads(job["warnings"]) if job["warnings"] else [],
        }


def view_job(job, now=None):
    status = PUBLIC_STATUS[job["status"]]
    saved = None
    if status == "done" and job["original_bytes"]:
        saved = round(100 * (1 - job["bytes"] / job["original_bytes"]), 1)
    expired = status == "done" and has_expired(job, now or utcnow())
    return JobView(job, status, expired, saved)


# -- reads for the API and the pages ----------------------------------------------


def insert_job(db, *, user_id, request, ttl_hours, now):
    """Insert a queued job for a validated request (service.CompressRequest); call inside a transaction."""
    probe, resize, keep_metadata = request.probe, request.choices.resize, request.choices.keep_metadata
    keep_metadata = None if keep_metadata == "none" else keep_metadata
    _announce(db)
    return db.execute(
        "INSERT INTO jobs (user_id, progress_key, download_token, target_size, output, filename,"
        " original_format, original_bytes, original_width, original_height, created_at, expires_at,"
        " max_width, max_height, fit, keep_metadata)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (user_id, secrets.token_urlsafe(24), secrets.token_urlsafe(24), request.target_size, request.output,
         request.filename, probe.format, len(request.data), probe.width, probe.height,
         to_iso(now), to_iso(now + timedelta(hours=ttl_hours)),
         resize and resize.max_width, resize and resize.max_height, resize and resize.fit, keep_metadata),
    ).fetchone()


def get_job(db, job_id):
    if not 0 <= job_id < 2**63:  # SQLite integers are 64-bit: a larger id cannot exist
        return None
    return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def get_job_by_progress_key(db, progress_key):
    return db.execute("SELECT * FROM jobs WHERE progress_key = ?", (progress_key,)).fetchone()


def get_owned_job(db, job_id, user_id):
    job = get_job(db, job_id)
    return job if job is not None and job["user_id"] == user_id else None


def recent_jobs(db, user_id, limit):
    return db.execute(
        "SELECT * FROM jobs WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
    ).fetchall()


def downloadable_jobs(db, user_id, job_ids, now):
    """The account's done, unexpired jobs among `job_ids`, oldest first."""
    marks = ",".join("?" * len(job_ids))
    return db.execute(
        f"SELECT * FROM jobs WHERE user_id = ? AND id IN ({marks}) AND status = 'done'"
        " AND files_deleted = 0 AND expires_at > ? ORDER BY id",
        (user_id, *job_ids, to_iso(now)),
    ).fetchall()


def all_jobs(db):
    """Every job row, oldest first (copy-to-postgres: the ids, and so the stored files, stay the same)."""
    return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()


def count_by_status(db, statuses=("queued", "running")):
    """{status: number of jobs} for `statuses`. One index range each (jobs_status), so the
    done and failed rows that pile up over the months cost nothing at every scrape."""
    return {status: db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]
            for status in statuses}


# -- the pool's steps, each a short transaction ------------------------------------

# Leases are on the database's clock (db.Dialect.now_iso / now_plus_iso, the ISO text every
# timestamp column holds), so a lease means the same on every host whatever its own clock says.
POLL_S = 0.5  # an idle worker looks for queued jobs this often: a new job starts within ~0.5 s
FALLBACK_POLL_S = 2.0  # the same while it LISTENs (PostgreSQL): the poll only covers a lost NOTIFY
DEFAULT_LEASE_S = 60
JOBS_CHANNEL = "imgsmaller_jobs"  # PostgreSQL: NOTIFY when jobs are queued; idle workers LISTEN (pool.py)


def _announce(db):
    """Inside the transaction that queues jobs: PostgreSQL delivers the NOTIFY at COMMIT, never
    for a rollback, so a woken worker finds the row. SQLite: nothing (workers poll)."""
    if dialect(db) is POSTGRESQL:
        db.execute("NOTIFY " + JOBS_CHANNEL)


def _claim_sql(db):
    return ("UPDATE jobs SET status = 'running', claimed_by = ?, started_at = ?, attempts = attempts + 1,"
            " lease_expires_at = " + dialect(db).now_plus_iso)


def has_queued_jobs(db):
    """One probe of the jobs_status index: cheap enough to run every POLL_S in every worker."""
    return db.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is not None


def wait_for_work(db, wake, poll_s=POLL_S):
    """Wait up to `poll_s` for `wake`, else probe the queue once: True if a job may be queued.

    `wake` is a threading.Event set when this process queues a job or stops and, on PostgreSQL,
    at each NOTIFY on JOBS_CHANNEL (pool.py LISTENs); the probe of the jobs_status index covers
    jobs queued by processes this one cannot hear (SQLite; a lost LISTEN).
    """
    if wake.wait(poll_s):
        wake.clear()
        return True
    return has_queued_jobs(db)


def claim_job(db, job_id, instance_id, lease_s=DEFAULT_LEASE_S):
    """Atomically move this queued job to running for this process; None if not claimable."""
    with transaction(db):
        return db.execute(
            _claim_sql(db) + " WHERE id = ? AND status = 'queued' RETURNING *",
            (instance_id, to_iso(utcnow()), int(lease_s), job_id),
        ).fetchone()


def claim_next_job(db, instance_id, lease_s=DEFAULT_LEASE_S, fits=None):
    """Claim the oldest queued job with a lease of `lease_s` on the database clock; None if none, or
    if `fits(row)` (the memory budget's say, job_memory.py) is false for it.

    PostgreSQL: FOR UPDATE SKIP LOCKED skips rows another claim has locked (no waiting, no double
    claim) and keeps this one locked while `fits` decides; the UPDATE's status check is the
    re-read that read committed needs (measured: without both, jobs ran ~6 times).
    SQLite: BEGIN IMMEDIATE serialises the whole claim.
    """
    with transaction(db):
        head = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1"
                          + dialect(db).skip_locked).fetchone()
        if head is None or (fits is not None and not fits(head)):
            return None
        return db.execute(_claim_sql(db) + " WHERE id = ? AND status = 'queued' RETURNING *",
                          (instance_id, to_iso(utcnow()), int(lease_s), head["id"])).fetchone()


# Fencing: renew, finish, fail and release only touch the attempt this process claimed, so a
# late answer from a process whose lease expired never overwrites a timeout or the retry.
_STILL_OURS = " WHERE id = ? AND attempts = ? AND claimed_by = ? AND status = 'running'"


def _ours(job):
    return job["id"], job["attempts"], job["claimed_by"]


def renew_lease(db, job, lease_s):
    """Extend the lease of a running job; False if it is no longer ours (reaped, timed out)."""
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET lease_expires_at = " + dialect(db).now_plus_iso + _STILL_OURS,
            (int(lease_s), *_ours(job)),
        ).rowcount == 1


def finish_job(db, job, result):
    """Record the result; False if the job was no longer ours to finish."""
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'done', format = ?, bytes = ?, width = ?, height = ?,"
            " quality_score = ?, encodes = ?, warnings = ?, finished_at = ?, lease_expires_at = NULL" + _STILL_OURS,
            (result.format, len(result.data), result.width, result.height, result.quality_score, result.encodes,
             json.dumps(list(getattr(result, "warnings", ()))), to_iso(utcnow()), *_ours(job)),
        ).rowcount == 1


def fail_job(db, job, message):
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?, lease_expires_at = NULL" + _STILL_OURS,
            (message, to_iso(utcnow()), *_ours(job)),
        ).rowcount == 1


def release_job(db, job):
    """Give a job back to the queue at shutdown; the attempt is not counted (it did not crash)."""
    with transaction(db):
        _announce(db)
        return db.execute(
            "UPDATE jobs SET status = 'queued', claimed_by = NULL, lease_expires_at = NULL,"
            " attempts = attempts - 1" + _STILL_OURS, _ours(job),
        ).rowcount == 1


def retry_or_fail_job(db, job):
    """After the job's process died under it: queued again, or failed after MAX_ATTEMPTS runs."""
    if job["attempts"] >= MAX_ATTEMPTS:
        return "failed" if fail_job(db, job, FAILED_MESSAGE) else None
    with transaction(db):
        _announce(db)
        requeued = db.execute(
            "UPDATE jobs SET status = 'queued', claimed_by = NULL, lease_expires_at = NULL" + _STILL_OURS, _ours(job),
        ).rowcount == 1
    return "queued" if requeued else None


def job_status(db, job_id):
    row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row["status"] if row else None


def _lease_passed(db):
    # No lease at all: claimed by the code before schema 4 (every claim since sets one).
    return "(lease_expires_at IS NULL OR lease_expires_at < " + dialect(db).now_iso + ")"


def requeue_expired_leases(db):
    """The reaper: running jobs whose lease passed on the database clock (their worker died or
    lost the database) go back to the queue, or fail after MAX_ATTEMPTS runs. Idempotent: every
    worker runs it; a second run in the same instant changes nothing."""
    with transaction(db):
        failed = db.execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?, lease_expires_at = NULL"
            " WHERE status = 'running' AND " + _lease_passed(db) + " AND attempts >= ? RETURNING id",
            (FAILED_MESSAGE, to_iso(utcnow()), MAX_ATTEMPTS),
        ).fetchall()
        requeued = db.execute(
            "UPDATE jobs SET status = 'queued', claimed_by = NULL, lease_expires_at = NULL"
            " WHERE status = 'running' AND " + _lease_passed(db) + " RETURNING id",
        ).fetchall()
        if requeued:
            _announce(db)
    for row in requeued:
        log.warning("Job %s lost its worker (lease expired); queued again", row["id"])
    for row in failed:
        log.warning("Job %s lost its worker %s times; failed", row["id"], MAX_ATTEMPTS)
    return [row["id"] for row in requeued], [row["id"] for row in failed]


_STILL_THEIRS = " WHERE id = ? AND status = 'running' AND coalesce(claimed_by, '') = coalesce(?, '') AND attempts = ?"


def expired_job_ids(db, now):
    """Finished jobs past expires_at whose files are still stored."""
    return [row["id"] for row in db.execute(
        "SELECT id FROM jobs WHERE files_deleted = 0 AND expires_at <= ? AND status IN ('done', 'failed')",
        (to_iso(now),),
    )]


def mark_files_deleted(db, job_id):
    with transaction(db):
        db.execute("UPDATE jobs SET files_deleted = 1 WHERE id = ?", (job_id,))


# -- the processes running jobs (for operators: who runs jobs, seen when) -------------


def beat_heartbeat(db, instance_id, hostname, pid):
    with transaction(db):
        db.execute(
            "INSERT INTO workers (id, hostname, pid, heartbeat_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (instance_id, hostname, pid, to_iso(utcnow())),
        )


def forget_worker(db, instance_id):
    with transaction(db):
        db.execute("DELETE FROM workers WHERE id = ?", (instance_id,))


def forget_silent_workers(db, seen_before):
    """Drop registry rows of processes not heard from since `seen_before` (they died unannounced)."""
    with transaction(db):
        db.execute("DELETE FROM workers WHERE heartbeat_at < ?", (to_iso(seen_before),))
