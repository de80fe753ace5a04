"""The job pool: queue, claim, run, finish, recover and expire compression jobs.

Workers get plain values (ids, paths, numbers), never Flask proxies. A job is
claimed with one conditional UPDATE, so two processes sharing the database
never run the same job. Each process registers itself in `workers` and beats a
heartbeat; a job claimed by a process that is gone (dead pid on this host, or
no heartbeat for STALE_AFTER_S) goes back to the queue and runs again.
"""

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from . import engine
from .db import connect, to_iso, transaction, utcnow
from .errors import ServiceError, ServiceUnavailableError
from .storage import Storage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job that killed its process this many times is failed, not retried forever
HEARTBEAT_S = 30  # how often a process says it is alive, requeues orphans and times out jobs
STALE_AFTER_S = 4 * HEARTBEAT_S  # heartbeat age after which another host's process counts as dead
FAILED_MESSAGE = "The image could not be processed."
TIMEOUT_MESSAGE = "The image took too long to process."


class JobRunner:
    def __init__(self, *, database, storage_dir, workers, max_pixels, cleanup_interval_s, job_timeout_s):
        self.database = database
        self.storage = Storage(storage_dir)
        self.workers = workers
        self.max_pixels = max_pixels
        self.cleanup_interval_s = cleanup_interval_s
        self.job_timeout_s = job_timeout_s
        self._next_cleanup = 0.0
        self.instance_id = secrets.token_hex(8)
        self.hostname = socket.gethostname()
        self._executor = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._maintenance = None
        self._pending = set()  # ids submitted to the pool and not yet started

    # -- life cycle ---------------------------------------------------------

    def start(self):
        """Start the pool and the maintenance thread once; recovers and queues old jobs."""
        with self._lock:
            if self._executor is not None:
                return
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imgsmaller-job")
            self._maintenance = threading.Thread(
                target=self._maintenance_loop, name="imgsmaller-maintenance", daemon=True
            )
        try:
            self.maintain()
        except Exception:  # e.g. the database is locked: the maintenance loop tries again
            log.exception("Start-up recovery failed; retrying in %ss", HEARTBEAT_S)
        self._maintenance.start()

    @property
    def started(self):
        return self._executor is not None

    def shutdown(self, wait=True):
        self._stopping.set()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)
        self._forget_worker()

    def submit(self, job_id):
        self.start()
        self._submit(job_id)

    def _submit(self, job_id):
        with self._lock:
            executor = self._executor
            if executor is None or job_id in self._pending:
                return
            self._pending.add(job_id)
        executor.submit(self._run_logged, job_id)

    def _maintenance_loop(self):
        while not self._stopping.wait(min(HEARTBEAT_S, self.cleanup_interval_s)):
            try:
                self.maintain()
            except Exception:
                log.exception("Maintenance run failed; trying again in %ss", HEARTBEAT_S)

    def maintain(self):
        """Heartbeat, requeue jobs of dead processes, fail overlong jobs, run queued jobs;
        every CLEANUP_INTERVAL_S also expire old results."""
        db = connect(self.database)
        try:
            self._heartbeat(db)
            requeue_orphaned_jobs(db, self.hostname, self.instance_id)
            fail_overlong_jobs(db, utcnow() - timedelta(seconds=self.job_timeout_s))
            queued = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id")]
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + self.cleanup_interval_s
                expire_results(db, self.storage, utcnow())
                self.storage.remove_stale_temp_files()
        finally:
            db.close()
        for job_id in queued:
            self._submit(job_id)

    def _heartbeat(self, db):
        with transaction(db):
            db.execute(
                "INSERT INTO workers (id, hostname, pid, heartbeat_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.instance_id, self.hostname, os.getpid(), to_iso(utcnow())),
            )

    def _forget_worker(self):
        try:
            db = connect(self.database)
            try:
                with transaction(db):
                    db.execute("DELETE FROM workers WHERE id = ?", (self.instance_id,))
            finally:
                db.close()
        except Exception:
            log.warning("Could not unregister worker %s", self.instance_id, exc_info=True)

    # -- one job ------------------------------------------------------------

    def _run_logged(self, job_id):
        with self._lock:
            self._pending.discard(job_id)
        try:
            self.run(job_id)
        except Exception:
            log.exception("Job %s crashed outside its error handling", job_id)

    def run(self, job_id):
        db = connect(self.database)
        try:
            job = claim_job(db, job_id, self.instance_id)
            if job is None:
                return  # someone else has it, or it is finished
            self._process(db, job)
        finally:
            db.close()

    def _process(self, db, job):
        job_id = job["id"]
        try:
            data = self.storage.read_input(job_id)
            result = engine.compress(
                data, output=job["output"], target_size=job["target_size"], max_pixels=self.max_pixels
            )
            self.storage.save_result(job_id, result.data)
        except ServiceUnavailableError:
            fail_job(db, job, "The result could not be stored (storage full or not writable). Please try again.")
        except ServiceError as error:
            fail_job(db, job, error.message)
        except FileNotFoundError:
            fail_job(db, job, "The uploaded image is no longer available.")
        except Exception:
            log.exception("Job %s failed", job_id)
            fail_job(db, job, FAILED_MESSAGE)
        else:
            if finish_job(db, job, result):
                log.info("Job %s done: %s %s -> %s bytes in %s encodes", job_id, result.format,
                         result.original_bytes, len(result.data), result.encodes)
            elif job_status(db, job_id) == "failed":
                self.storage.discard(self.storage.result_path(job_id))  # timed out meanwhile


# -- database steps, each a short transaction --------------------------------


def claim_job(db, job_id, instance_id):
    """Atomically move a queued job to running for this process; None if not claimable."""
    with transaction(db):
        return db.execute(
            "UPDATE jobs SET status = 'running', claimed_by = ?, started_at = ?, attempts = attempts + 1"
            " WHERE id = ? AND status = 'queued' RETURNING *",
            (instance_id, to_iso(utcnow()), job_id),
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
    """Fail jobs running since before `started_before`; their threads' late answers are dropped."""
    with transaction(db):
        rows = db.execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished_at = ?"
            " WHERE status = 'running' AND started_at < ? RETURNING id",
            (TIMEOUT_MESSAGE, to_iso(utcnow()), to_iso(started_before)),
        ).fetchall()
    for row in rows:
        log.warning("Job %s timed out", row["id"])
    return len(rows)


def requeue_orphaned_jobs(db, hostname, own_instance_id):
    """Put back jobs whose process died; fail those that died too often."""
    stale_before = to_iso(utcnow() - timedelta(seconds=STALE_AFTER_S))
    with transaction(db):
        workers = db.execute("SELECT id, hostname, pid, heartbeat_at FROM workers").fetchall()
        dead = [w["id"] for w in workers if w["id"] != own_instance_id and _is_dead(w, hostname, stale_before)]
        db.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in dead])
        live = {w["id"] for w in workers} - set(dead)
        running = db.execute("SELECT id, claimed_by, attempts FROM jobs WHERE status = 'running'").fetchall()
        for job in running:
            if job["claimed_by"] in live:
                continue
            if job["attempts"] >= MAX_ATTEMPTS:
                db.execute(
                    "UPDATE jobs SET status = 'failed', message = ?, finished_at = ? WHERE id = ?",
                    (FAILED_MESSAGE, to_iso(utcnow()), job["id"]),
                )
            else:
                db.execute("UPDATE jobs SET status = 'queued', claimed_by = NULL WHERE id = ?", (job["id"],))
                log.warning("Job %s lost its process; queued again", job["id"])


def _is_dead(worker, hostname, stale_before):
    if worker["hostname"] == hostname:
        return not _pid_alive(worker["pid"]) or worker["pid"] == os.getpid()
    return worker["heartbeat_at"] < stale_before


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def expire_results(db, storage, now):
    """Delete the files of jobs past expires_at; the row stays so downloads can answer 410."""
    expired = db.execute(
        "SELECT id FROM jobs WHERE files_deleted = 0 AND expires_at <= ? AND status IN ('done', 'failed')",
        (to_iso(now),),
    ).fetchall()
    for row in expired:
        storage.delete_job_files(row["id"])
        with transaction(db):
            db.execute("UPDATE jobs SET files_deleted = 1 WHERE id = ?", (row["id"],))
    return len(expired)


def init_app(app):
    runner = JobRunner(
        database=app.config["DATABASE"],
        storage_dir=app.config["STORAGE_DIR"],
        workers=app.config["WORKERS"],
        max_pixels=app.config["MAX_PIXELS"],
        cleanup_interval_s=app.config["CLEANUP_INTERVAL_S"],
        job_timeout_s=app.config["JOB_TIMEOUT_S"],
    )
    app.extensions["imgsmaller.jobs"] = runner

    @app.before_request
    def start_job_runner():
        if not runner.started:
            runner.start()

    if _serving():
        runner.start()
    return runner


def _serving():
    """True unless the app was loaded for a `flask` command other than `run`.

    `flask --app app init-db` must not start a pool that would claim jobs and
    then hold the command open until they finish.
    """
    import click

    context = click.get_current_context(silent=True)
    return context is None or context.info_name == "run"
