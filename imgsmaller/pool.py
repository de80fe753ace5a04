"""The job pool: runs queued compression jobs, recovers those of dead processes, expires old results.

Workers get plain values (ids, paths, numbers), never Flask proxies; every
statement on the jobs table goes through job_store. Each process registers itself
in `workers` and beats a heartbeat; a job claimed by a process that is gone (dead
pid on this host, or no heartbeat for STALE_AFTER_S) goes back to the queue.

The pool starts explicitly: on the first request a process serves, or from the
`serve` command before it listens. A `flask` command that only loads the app
(init-db, create-user) and Flask's reloader parent never start one.
"""

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from flask import request

from . import engine, job_store
from .db import connect, database_of, to_iso, utcnow
from .errors import ServiceError, ServiceUnavailableError
from .job_store import FAILED_MESSAGE, MAX_ATTEMPTS, TIMEOUT_MESSAGE  # noqa: F401  (re-exported for callers)
from .storage import Storage

log = logging.getLogger(__name__)

HEARTBEAT_S = 30  # how often a process says it is alive, requeues orphans and times out jobs
STALE_AFTER_S = 4 * HEARTBEAT_S  # heartbeat age after which another host's process counts as dead


class JobRunner:
    """The pool of one process. `inline=True` (tests) runs each job in the submitting thread."""

    def __init__(self, *, database, storage, workers, max_pixels, cleanup_interval_s, job_timeout_s, inline=False):
        self.database = database
        self.storage = storage
        self.workers = workers
        self.max_pixels = max_pixels
        self.cleanup_interval_s = cleanup_interval_s
        self.job_timeout_s = job_timeout_s
        self.inline = inline
        self._next_cleanup = 0.0
        self.instance_id = secrets.token_hex(8)
        self.hostname = socket.gethostname()
        self._executor = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._maintenance = None
        self._pending = set()  # ids submitted to the pool and not yet started
        self.on_job_finished = None  # callable(job, Result or None when failed, seconds); set by ops (metrics)

    # -- life cycle ---------------------------------------------------------

    def start(self):
        """Start the pool and the maintenance thread once; recovers and queues old jobs."""
        if self.inline:
            return
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

    @property
    def alive(self):
        """Started with its maintenance thread running; an inline runner needs no thread."""
        return self.inline or (self.started and self._maintenance.is_alive())

    def shutdown(self, wait=True):
        self._stopping.set()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)
            self._forget_worker()

    def submit(self, job_id):
        """Run the job soon (or now, inline). Call after the transaction that queued it committed."""
        if self.inline:
            self.run(job_id)
            return
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
            job_store.beat_heartbeat(db, self.instance_id, self.hostname, os.getpid())
            requeue_orphaned_jobs(db, self.hostname, self.instance_id)
            job_store.fail_overlong_jobs(db, utcnow() - timedelta(seconds=self.job_timeout_s))
            queued = job_store.queued_job_ids(db)
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + self.cleanup_interval_s
                expire_results(db, self.storage, utcnow())
                self.storage.remove_stale_temp_files()
        finally:
            db.close()
        for job_id in queued:
            self._submit(job_id)

    def _forget_worker(self):
        try:
            db = connect(self.database)
            try:
                job_store.forget_worker(db, self.instance_id)
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
            job = job_store.claim_job(db, job_id, self.instance_id)
            if job is None:
                return  # someone else has it, or it is finished
            self._process(db, job)
        finally:
            db.close()

    def _process(self, db, job):
        job_id = job["id"]
        started, finished = time.monotonic(), None
        try:
            data = self.storage.read_input(job_id)
            result = engine.compress(
                data, output=job["output"], target_size=job["target_size"], max_pixels=self.max_pixels
            )
            self.storage.save_result(job_id, result.data)
        except ServiceUnavailableError:
            job_store.fail_job(db, job, "The result could not be stored (storage full or not writable). Please try again.")
        except ServiceError as error:
            job_store.fail_job(db, job, error.message)
        except FileNotFoundError:
            job_store.fail_job(db, job, "The uploaded image is no longer available.")
        except Exception:
            log.exception("Job %s failed", job_id)
            job_store.fail_job(db, job, FAILED_MESSAGE)
        else:
            if job_store.finish_job(db, job, result):
                finished = result
                log.info("Job %s done: %s %s -> %s bytes in %s encodes", job_id, result.format,
                         result.original_bytes, len(result.data), result.encodes)
            elif job_store.job_status(db, job_id) == "failed":
                self.storage.discard(self.storage.result_path(job_id))  # timed out meanwhile
        if self.on_job_finished is not None:
            self.on_job_finished(job, finished, time.monotonic() - started)


def requeue_orphaned_jobs(db, hostname, own_instance_id):
    """Put back jobs whose process died; fail those that died too often."""
    stale_before = to_iso(utcnow() - timedelta(seconds=STALE_AFTER_S))

    def is_dead(worker):
        if worker["hostname"] == hostname:
            return not _pid_alive(worker["pid"]) or worker["pid"] == os.getpid()
        return worker["heartbeat_at"] < stale_before

    job_store.requeue_orphaned_jobs(db, is_dead, own_instance_id)


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
    expired = job_store.expired_job_ids(db, now)
    for job_id in expired:
        storage.delete_job_files(job_id)
        job_store.mark_files_deleted(db, job_id)
    return len(expired)


def init_app(app):
    runner = JobRunner(
        database=database_of(app.config),
        storage=Storage(app.config["STORAGE_DIR"]),
        workers=app.config["WORKERS"],
        max_pixels=app.config["MAX_PIXELS"],
        cleanup_interval_s=app.config["CLEANUP_INTERVAL_S"],
        job_timeout_s=app.config["JOB_TIMEOUT_S"],
        inline=bool(app.config.get("INLINE_JOBS")),
    )
    app.extensions["imgsmaller.jobs"] = runner

    @app.before_request
    def start_job_runner():
        # The process that serves requests runs jobs; one that only loads the app does not.
        # Not for a liveness probe: starting the pool waits on the database (ops.py).
        if not runner.started and request.endpoint != "ops.get_health":
            runner.start()

    return runner


def current_runner(app):
    return app.extensions["imgsmaller.jobs"]
