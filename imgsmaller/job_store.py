"""The `jobs` and `workers` tables: every statement that reads or writes them, and a job's public view.

Imports only the stdlib and db.py. The job pool, the API, the pages and the CLI
all go through these functions; no other module writes SQL on these tables.
Statements that decide a write are conditional on the row's state (a claim takes only
a queued job, a finish only a job still ours), so two processes or hosts sharing the
database never claim or finish the same job twice, on SQLite (where BEGIN IMMEDIATE also
serialises writers) and on PostgreSQL (read committed re-checks the outer WHERE).
"""

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from .db import dialect, to_iso, transaction, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job that killed its process this many times is failed, not retried forever
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
    probe = request.probe
    return db.execute(
        "INSERT INTO jobs (user_id, progress_key, download_token, target_size, output, filename,"
        " original_format, original_bytes, original_width, original_height, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (user_id, secrets.token_urlsafe(24), secrets.token_urlsafe(24), request.target_size, request.output,
         request.filename, probe.format, len(request.data), probe.width, probe.height,
         to_iso(now), to_iso(now + timedelta(hours=ttl_hours))),
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


def queued_job_ids(db):
    return [row["id"] for row in db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id")]


def claim_job(db, job_id, instance_id):
    """Atomically move a queued job to running for this process; None if not claimable."""
    return _claim(db, instance_id, " AND id = ?", (job_id,))


def claim_next_job(db, instance_id):
    """Claim the oldest queued job for this process; None when the queue is empty."""
    return _claim(db, instance_id, "", ())


def _claim(db, instance_id, only, params):
    # PostgreSQL: the subselect skips rows another claim has locked (no waiting, no double
    # claim), and the outer status check re-reads the row once it is locked, since read
    # committed re-evaluates only the outer WHERE. Measured: without both, jobs ran ~6 times.
    # SQLite: BEGIN IMMEDIATE serialises the whole statement.
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'running', claimed_by = ?, started_at = ?, attempts = attempts + 1"
            " WHERE id = (SELECT id FROM jobs WHERE status = 'queued'" + only + " ORDER BY id LIMIT 1"
            + dialect(db).skip_locked + ") AND status = 'queued' RETURNING *",
            (instance_id, to_iso(utcnow()), *params),
        ).fetchone()


# finish_job and fail_job only touch a job this process still holds, so a late
# answer never overwrites a timeout or the work of a process that took it over.
_STILL_OURS = " WHERE id = ? AND status = 'running' AND claimed_by = ?"


def finish_job(db, job, result):
    """Record the result; False if the job was no longer ours to finish."""
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'done', format = ?, bytes = ?, width = ?, height = ?,"
            " quality_score = ?, encodes = ?, finished_at = ?" + _STILL_OURS,
            (result.format, len(result.data), result.width, result.height, result.quality_score,
             result.encodes, to_iso(utcnow()), job["id"], job["claimed_by"]),
        ).rowcount == 1


def fail_job(db, job, message):
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?" + _STILL_OURS,
            (message, to_iso(utcnow()), job["id"], job["claimed_by"]),
        ).rowcount == 1


def job_status(db, job_id):
    row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row["status"] if row else None


def fail_overlong_jobs(db, started_before):
    """Fail jobs running since before `started_before` (their threads' late answers are dropped)."""
    with transaction(db):
        rows = db.execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?"
            " WHERE status = 'running' AND started_at < ? RETURNING id",
            (TIMEOUT_MESSAGE, to_iso(utcnow()), to_iso(started_before)),
        ).fetchall()
    for row in rows:
        log.warning("Job %s timed out", row["id"])
    return len(rows)


def requeue_orphaned_jobs(db, is_dead, own_instance_id):
    """Put back jobs whose process died (`is_dead(worker_row)`); fail those that died too often."""
    with transaction(db):
        workers = db.execute("SELECT id, hostname, pid, heartbeat_at FROM workers").fetchall()
        dead = [w["id"] for w in workers if w["id"] != own_instance_id and is_dead(w)]
        db.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in dead])
        live = {w["id"] for w in workers} - set(dead)
        for job in db.execute("SELECT id, claimed_by, attempts FROM jobs WHERE status = 'running'").fetchall():
            if job["claimed_by"] in live:
                continue
            # Conditional on what was read: on PostgreSQL another process may have requeued and
            # re-claimed the job since (SQLite's BEGIN IMMEDIATE rules that out).
            still = (job["id"], job["claimed_by"], job["attempts"])
            if job["attempts"] >= MAX_ATTEMPTS:
                db.execute(
                    "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?" + _STILL_THEIRS,
                    (FAILED_MESSAGE, to_iso(utcnow()), *still),
                )
            elif db.execute("UPDATE jobs SET status = 'queued', claimed_by = NULL" + _STILL_THEIRS, still).rowcount:
                log.warning("Job %s lost its process; queued again", job["id"])


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


# -- the processes running jobs ------------------------------------------------------


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
